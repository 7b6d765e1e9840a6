"""A real `podium serve` for a whole test module, and a fake upstream that outlives one test.

`serve` starts the command line exactly as a user does (`python -m gateway serve`), on the
default config or on a written one, and waits for /readyz. `ThreadedUpstream` runs Podium's
simulator on its own event loop in a thread, so that module-scoped gateways can point at it
while every test keeps its own loop; its record of requests is what a test asserts on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import urllib.request
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from gateway.simulator import RECORDED, RecordedRequest, SimModel, start_simulator
from tests.support.net import free_port
from tests.support.waiting import CEILING_S, until_sync

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def serve(state_dir: Path, config: dict[str, Any] | None = None) -> Iterator[str]:
    """`podium serve` on `config` (None: the shipped config/gateway.yaml); yields the base URL
    (".../v1"). The process is stopped, and its output shown if it died, afterwards."""
    port, sim_port = free_port(), free_port()
    env = {**os.environ, "PODIUM_PORT": str(port), "PODIUM_SIM_PORT": str(sim_port),
           "PODIUM_STATE_DIR": str(state_dir)}
    for name in ("PODIUM_CONFIG", "PODIUM_KEY"):
        env.pop(name, None)
    args = [sys.executable, "-m", "gateway", "serve"]
    if config is not None:
        path = state_dir / "gateway.yaml"
        path.write_text(yaml.safe_dump(config))
        args += ["--config", str(path)]
    log = (state_dir / "serve.log").open("w")
    proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        until_sync(lambda: _ready(port, proc, state_dir), "podium serve to be ready",
                   poll_s=0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=CEILING_S)
        log.close()


def _ready(port: int, proc: subprocess.Popen[bytes], state_dir: Path) -> bool:
    assert proc.poll() is None, (state_dir / "serve.log").read_text()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class ThreadedUpstream:
    """The simulator on a loop of its own, in a daemon thread, until `stop`."""

    def __init__(self, api_key: str, models: dict[str, SimModel] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="sim-upstream",
                                        daemon=True)
        self._thread.start()
        started: Future[tuple[web.AppRunner, int]] = asyncio.run_coroutine_threadsafe(
            start_simulator("127.0.0.1", 0, models or {}, api_key=api_key), self._loop)
        self._runner, port = started.result(timeout=CEILING_S)
        self.url = f"http://127.0.0.1:{port}/v1"

    @property
    def recorded(self) -> deque[RecordedRequest]:
        return self._runner.app[RECORDED]

    def calls(self, marker: str) -> list[RecordedRequest]:
        """The requests whose body mentions `marker` (a test's own word), oldest first."""
        return [r for r in list(self.recorded) if marker in repr(r.body)]

    def models(self, marker: str) -> list[str]:
        return [r.body["model"] for r in self.calls(marker) if isinstance(r.body, dict)]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(CEILING_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(CEILING_S)
        self._loop.close()
