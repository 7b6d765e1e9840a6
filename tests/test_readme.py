"""The README is tested: its two commands, its config examples, and its quick start, run against
`podium serve` on the embedded default config (a real process, real ports)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import parse_config
from tests.support.net import free_port
from tests.support.waiting import CEILING_S, until_sync

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- readme-test: (\w+) -->\n```\w+\n(.*?)```", re.S)


def blocks(kind: str) -> list[str]:
    return [body for k, body in BLOCK.findall(README) if k == kind]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one() -> None:
    commands = re.findall(r"```sh\n(.*?)\n```", README, re.S)[:2]
    assert commands[0].endswith("podium serve")
    assert "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert commands[1] in ci.splitlines()


@pytest.mark.parametrize("example", blocks("config"))
def test_config_examples_are_valid(example: str) -> None:
    env = {"OPENAI_API_KEY": "sk-o", "ANTHROPIC_API_KEY": "sk-a", "APP_KEY": "sk-app",
           "ADMIN_KEY": "sk-admin"}
    cfg = parse_config(yaml.safe_load(example), env=env)
    assert cfg.model_list


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    port, sim_port = free_port(), free_port()
    env = {**os.environ, "PODIUM_PORT": str(port), "PODIUM_SIM_PORT": str(sim_port),
           "PODIUM_STATE_DIR": str(tmp_path_factory.mktemp("state"))}
    for name in ("PODIUM_CONFIG", "PODIUM_KEY", "PODIUM_ADMIN_KEY"):
        env.pop(name, None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_ready(port, proc)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=CEILING_S)


def wait_ready(port: int, proc: subprocess.Popen[str]) -> None:
    """Poll /readyz (a real condition, bounded) until the litellm provider has loaded."""
    def ready() -> bool:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False
    until_sync(ready, "podium serve to be ready", poll_s=0.1)


def test_python_quick_start_runs_against_the_default_config(served: int) -> None:
    """Twice in a row, as a new user would run it (each run prints who answered)."""
    [code] = blocks("python")
    code = code.replace("127.0.0.1:4000", f"127.0.0.1:{served}")
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=CEILING_S)
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "Simulated answer from sim-small: Hello!"
        assert lines[1].startswith("answered by sim-small for $ 0.0000")
        assert lines[2] == "Simulated answer from sim-small: Stream, please"
        assert lines[3] == "2 embeddings"


def run_block(kind: str, port: int) -> list[str]:
    [code] = blocks(kind)
    code = code.replace("127.0.0.1:4000", f"127.0.0.1:{port}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=CEILING_S)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_agents_sdk_quick_start(served: int) -> None:
    """The agent calls its tool (the simulator asks for it), then answers the question."""
    assert run_block("agents", served) == ["Simulated answer from sim-small: Weather in Oslo?"]


def test_anthropic_sdk_quick_start(served: int) -> None:
    lines = run_block("anthropic", served)
    assert lines[:2] == ["Simulated answer from sim-small: Hello, Claude!",
                         "Simulated answer from sim-small: Stream, please"]
    count, word = lines[2].split()
    assert int(count) > 0 and word == "tokens"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_quick_start(served: int) -> None:
    [script] = blocks("sh")
    script = script.replace("127.0.0.1:4000", f"127.0.0.1:{served}")
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                            timeout=CEILING_S)
    assert result.returncode == 0
    assert '"content":"Simulated answer from sim-small: Hello!"' in result.stdout


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_admin_quick_start_and_signing_in(served: int) -> None:
    """The README's admin key works on /admin and signs in to the dashboard, which flags it."""
    [script] = blocks("admin")
    result = subprocess.run(["sh", "-c", script.replace("127.0.0.1:4000", f"127.0.0.1:{served}")],
                            capture_output=True, text=True, timeout=CEILING_S)
    assert result.returncode == 0 and json.loads(result.stdout)["object"] == "list"
    key = re.search(r"Bearer (sk-[\w-]+)", script)
    assert key is not None and "sign in with it" in README
    base = f"http://127.0.0.1:{served}"
    form = urllib.parse.urlencode({"key": key.group(1)}).encode()
    login = urllib.request.Request(base + "/dashboard/login", data=form, method="POST")
    opener = urllib.request.build_opener(NoRedirect)
    with opener.open(login, timeout=CEILING_S) as resp:
        assert resp.status == 303
        cookie = resp.headers["Set-Cookie"].split(";")[0]
    page = urllib.request.Request(base + "/dashboard", headers={"Cookie": cookie})
    with urllib.request.urlopen(page, timeout=CEILING_S) as resp:
        body = resp.read().decode()
    assert 'id="dashboard"' in body and 'id="dev-banner"' in body


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def http_error_303(self, req: Any, fp: Any, code: int, msg: str, headers: Any) -> Any:
        return fp
