"""`podium serve` starting up, as a real process on the default config: a busy port (the
gateway's or the simulator's, held by a real socket) is one line naming the port and what
moves it, exit 1, and never "serving"; a good start logs the config's warnings (the development
admin key among them) and says "serving" only once the socket takes connections."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.net import free_port
from tests.support.waiting import CEILING_S, until_sync

ROOT = Path(__file__).resolve().parents[1]


def serve_env(tmp_path: Path, port: int, sim_port: int) -> dict[str, str]:
    env = {**os.environ, "PODIUM_PORT": str(port), "PODIUM_SIM_PORT": str(sim_port),
           "PODIUM_STATE_DIR": str(tmp_path)}
    for name in ("PODIUM_CONFIG", "PODIUM_KEY", "PODIUM_ADMIN_KEY", "PODIUM_HOST"):
        env.pop(name, None)
    return env


@pytest.fixture
def busy() -> Iterator[int]:
    """A port held by a real listening socket (no SO_REUSEPORT) for the test's duration."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def serve(tmp_path: Path, port: int, sim_port: int,
          *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gateway", "serve", *extra], cwd=ROOT,
                          env=serve_env(tmp_path, port, sim_port), capture_output=True,
                          text=True, timeout=CEILING_S)


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "pool"])
def test_a_busy_gateway_port_is_one_line(tmp_path: Path, busy: int, workers: list[str]) -> None:
    result = serve(tmp_path, busy, free_port(), *workers)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).strip().splitlines() == [
        f"podium: the gateway cannot listen on 127.0.0.1:{busy}: the port is in use; set "
        f"PODIUM_PORT or --port to use another port"]


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]], ids=["one", "pool"])
def test_a_busy_simulator_port_is_one_line(tmp_path: Path, busy: int,
                                           workers: list[str]) -> None:
    result = serve(tmp_path, free_port(), busy, *workers)
    assert result.returncode == 1
    assert (result.stdout + result.stderr).strip().splitlines() == [
        f"podium: the simulator cannot listen on 127.0.0.1:{busy}: the port is in use; set "
        f"PODIUM_SIM_PORT (the default config reads it) or simulator.port to use another port"]


def test_the_flag_names_the_port_it_moves(tmp_path: Path, busy: int) -> None:
    result = serve(tmp_path, free_port(), free_port(), "--port", str(busy))
    assert result.returncode == 1 and f"127.0.0.1:{busy}: the port is in use" in result.stderr


def started(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], list[str]]:
    """`podium serve` on its way up; its output lines, read until it says "serving" (when the
    socket must take a connection at once) or exits."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "serve", *args], cwd=ROOT,
                            env=serve_env(tmp_path, port, free_port()), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines: list[str] = []
    accepted: list[bool] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "serving" in line and not accepted:  # at once: is the socket really bound?
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    accepted.append(True)

    threading.Thread(target=read, daemon=True).start()
    until_sync(lambda: accepted or proc.poll() is not None, "podium serve to say serving",
               poll_s=0.05)
    assert accepted, "".join(lines)
    return proc, lines


def messages_of(lines: list[str]) -> list[str]:
    return [json.loads(line)["message"] for line in lines if line.startswith("{")]


def test_warnings_at_start_and_serving_only_once_bound(tmp_path: Path) -> None:
    proc, lines = started(tmp_path)
    try:
        messages = messages_of(lines)
        serving = next(i for i, m in enumerate(messages) if m.startswith("serving"))
        warned = [i for i, m in enumerate(messages)
                  if m.startswith("config: admin_keys[0].key: this is the development admin key")]
        assert warned and warned[0] < serving, messages
        assert "sk-podium-admin-dev" not in "".join(lines)
    finally:
        proc.terminate()
        proc.wait(timeout=CEILING_S)


def test_a_team_that_can_reach_nothing_is_reported_at_start(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "config" / "gateway.yaml").read_text())
    config["teams"] = [{"name": "dev", "data_class": "confidential"}]
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    proc, lines = started(tmp_path, "--config", str(path))
    try:
        assert any(m.startswith("config: teams[0]: team 'dev' can reach no deployment: its "
                                "data_class is 'confidential'") for m in messages_of(lines))
    finally:
        proc.terminate()
        proc.wait(timeout=CEILING_S)
