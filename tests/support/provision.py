"""Tools a few tests drive as real processes, provisioned once and reused across runs.

    phoenix    Arize Phoenix, a trace backend, pinned, in `.venv-phoenix/` (git-ignored) at the
               project's root: its own venv, so its dependencies never touch the project's.
               The first install resolves and builds about a hundred packages: a few minutes
               on 2 cores, longer on a loaded machine; every later run finds it in place.
    chromium   Debian's chromium and chromium-driver, through apt-get (root only), for the
               dashboard's browser test; once installed they stay installed.

A test asks for a tool with the marker `provisioned("<tool>")`. As soon as pytest has collected
the tests it will run, `start_needed` begins installing every tool they need in a background
thread, so the installs run while the rest of the suite does; the test's fixture then waits
for its tool (`ready`), with a generous ceiling, outside the test's own timeout. A tool that
cannot be installed skips its tests with the reason, except Phoenix under CI (`CI` set), where
a failed install fails: CI installs the project from the same registry, so it must work there.
`pytest -m "not provisioned"` runs everything else, with no install at all.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHOENIX_VERSION = "20.26.1"
PHOENIX_VENV = ROOT / ".venv-phoenix"
PHOENIX = PHOENIX_VENV / "bin" / "phoenix"
# Written once the pinned version installed completely: a half-built venv is rebuilt.
_PHOENIX_DONE = PHOENIX_VENV / f".podium-arize-phoenix-{PHOENIX_VERSION}"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Ceilings, not estimates: an install that takes longer than this is broken, not slow.
INSTALL_CEILING_S = 1800.0
MARKER = "provisioned"


@dataclass
class _Install:
    """One tool's install, run at most once per test session, in its own thread."""
    run: Callable[[], str | None]          # None when installed, else why it is not
    done: threading.Event = field(default_factory=threading.Event)
    problem: str | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name="podium-test-provision")
            self.thread.start()

    def _run(self) -> None:
        try:
            self.problem = self.run()
        except Exception as exc:  # reported to the test that needs the tool
            self.problem = f"{type(exc).__name__}: {exc}"
        finally:
            self.done.set()


def _install_phoenix() -> str | None:
    if _PHOENIX_DONE.exists() and PHOENIX.exists():
        return None
    steps = [[sys.executable, "-m", "venv", "--clear", str(PHOENIX_VENV)],
             [str(PHOENIX_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
              "--disable-pip-version-check", f"arize-phoenix=={PHOENIX_VERSION}"]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_CEILING_S,
                              check=False)
        if done.returncode != 0:
            return (f"cannot install arize-phoenix=={PHOENIX_VERSION} into {PHOENIX_VENV} "
                    f"(no package registry?): {done.stderr.strip()[-800:]}")
    _PHOENIX_DONE.write_text(f"arize-phoenix=={PHOENIX_VERSION}\n")
    return None


def _install_chromium() -> str | None:
    if all(os.path.exists(p) for p in (CHROMIUM, CHROMEDRIVER)):
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} or {CHROMEDRIVER} missing: apt-get install chromium chromium-driver"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"]
    for command in (install, ["apt-get", "update", "-q"], install):
        try:
            subprocess.run(command, env=env, capture_output=True, timeout=INSTALL_CEILING_S,
                           check=False)
        except (OSError, subprocess.TimeoutExpired):
            break
        if all(os.path.exists(p) for p in (CHROMIUM, CHROMEDRIVER)):
            return None
    return f"{CHROMIUM} or {CHROMEDRIVER} missing and apt-get could not install them"


_INSTALLS = {"phoenix": _Install(_install_phoenix), "chromium": _Install(_install_chromium)}
# Tools whose install must work where CI runs (see the module docstring).
_REQUIRED_IN_CI = frozenset({"phoenix"})


def tools_of(items: Iterable[pytest.Item]) -> set[str]:
    return {str(arg) for item in items for mark in item.iter_markers(MARKER)
            for arg in mark.args}


def start_needed(items: Iterable[pytest.Item]) -> None:
    """Begin installing, in the background, every tool the collected tests need."""
    for tool in sorted(tools_of(items)):
        _INSTALLS[tool].start()


def ready(tool: str) -> None:
    """Wait for `tool`'s install (starting it if nothing has); skip, or fail under CI, when it
    cannot be installed."""
    install = _INSTALLS[tool]
    install.start()
    if not install.done.wait(INSTALL_CEILING_S):
        problem: str | None = f"installing {tool} took over {INSTALL_CEILING_S:g}s"
    else:
        problem = install.problem
    if problem is None:
        return
    if tool in _REQUIRED_IN_CI and os.environ.get("CI"):
        pytest.fail(problem)
    pytest.skip(problem)
