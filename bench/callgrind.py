"""valgrind's callgrind, as the instruction-count bench uses it: found (or installed with
apt-get), wrapped around a process with instrumentation off at start, switched on and off
around a measured block with `callgrind_control`, and its dump files read.

Instructions executed (callgrind's `Ir` event) do not depend on what else the machine is
doing, so a count per request compares two versions of the code on a busy shared machine where
requests/s drifts by ±30 % from run to run. Every thread of the process is counted (the span
export thread and the log flusher included), and nothing outside it (the kernel's share of a
system call is not an instruction of the process)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

_TOTALS = re.compile(rb"^(?:totals|summary):\s+(\d+)", re.MULTILINE)
_EVENTS = re.compile(rb"^events:\s+(.+)$", re.MULTILINE)


def ensure_valgrind(log: Callable[[str], None]) -> str:
    """The path of `valgrind`; installed with apt-get when missing (as root, or via sudo)."""
    found = shutil.which("valgrind")
    if found and shutil.which("callgrind_control"):
        return found
    log("valgrind is not installed: installing it with `apt-get install -y valgrind` "
        "(the instruction-count bench runs the servers under valgrind's callgrind)")
    sudo = [] if os.geteuid() == 0 else (["sudo", "-n"] if shutil.which("sudo") else [])
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "valgrind"]):
        out = subprocess.run([*sudo, *step], capture_output=True, text=True, timeout=900,
                             check=False, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        if out.returncode:
            raise SystemExit("could not install valgrind (`apt-get install -y valgrind` failed: "
                             f"{(out.stderr or out.stdout).strip()[-300:]}); install it and "
                             "run the instruction-count bench again")
    found = shutil.which("valgrind")
    if not found:
        raise SystemExit("valgrind is still not on PATH after apt-get install")
    return found


def version() -> str:
    out = subprocess.run(["valgrind", "--version"], capture_output=True, text=True, check=False)
    return out.stdout.strip()


def wrap(argv: list[str], out_dir: Path, name: str) -> list[str]:
    """`argv` under callgrind, instrumentation off until `Callgrind.on`. One output file per
    process (threads summed), dumps numbered after it."""
    return ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--collect-systime=no",
            "--dump-instr=no", "--compress-strings=no", "--compress-pos=no",
            f"--callgrind-out-file={out_dir}/{name}.%p.callgrind", *argv]


class Callgrind:
    """Control of one callgrind process (`callgrind_control`, through valgrind's gdbserver)."""

    def __init__(self, pid: int, out_dir: Path, name: str) -> None:
        self.pid = pid
        self.out_dir = out_dir
        self.name = name

    def _control(self, *args: str) -> None:
        out = subprocess.run(["callgrind_control", *args, str(self.pid)], capture_output=True,
                             text=True, timeout=120, check=False)
        if out.returncode or "OK" not in out.stdout:
            raise RuntimeError(f"callgrind_control {' '.join(args)} {self.pid} failed: "
                               f"{(out.stdout + out.stderr).strip()[-300:]}")

    def on(self) -> None:
        """Instrument from now on, counters zeroed."""
        self._control("--instr=on")
        self._control("--zero")

    def off_and_dump(self) -> int:
        """Dump the counters since `on`, stop instrumenting; the instructions counted."""
        before = set(self._dumps())
        self._control("--dump=measured")
        self._control("--instr=off")
        new = sorted(set(self._dumps()) - before, key=lambda p: p.stat().st_mtime)
        if not new:
            raise RuntimeError(f"callgrind wrote no dump for {self.name} (pid {self.pid})")
        return instructions(new[-1])

    def _dumps(self) -> list[Path]:
        return list(self.out_dir.glob(f"{self.name}.{self.pid}.callgrind.*"))


def instructions(path: Path) -> int:
    """The `Ir` total of one callgrind output file."""
    raw = path.read_bytes()
    events = _EVENTS.search(raw)
    if events is None or events.group(1).split()[0] != b"Ir":
        raise ValueError(f"{path}: no Ir event in the callgrind output")
    totals = _TOTALS.findall(raw)
    if not totals:
        raise ValueError(f"{path}: no totals line in the callgrind output")
    return int(totals[-1])


def python_argv(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]
