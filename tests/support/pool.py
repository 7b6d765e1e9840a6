"""A real `podium serve --workers N`: its own process group, ready before it is used, stopped
whole afterwards whatever state it is in."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import yaml

from tests.support.net import free_port, get_json
from tests.support.waiting import CEILING_S, until

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def running_pool(config: dict[str, Any], tmp_path: Path, workers: int = 2,
                       log: Path | None = None,
                       ) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`podium serve --workers N` on `config`, ready; the whole process group stopped after.
    Its stderr (the logs) goes to `log` when given."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = free_port()
    with (log or Path(os.devnull)).open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; the wait is async
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port",
             str(port), "--workers", str(workers)], cwd=ROOT, stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True)  # its own process group: teardown stops the workers too
    base = f"http://127.0.0.1:{port}"
    try:
        await until(lambda: get_json(base + "/readyz"), "the pool to be ready")
        yield proc, base
    finally:
        await asyncio.to_thread(stop_group, proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the supervisor and every worker it started, whatever state they are in."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=CEILING_S)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything that did not drain in time
    proc.wait(timeout=CEILING_S)


async def pids(base: str, n: int = 40) -> set[int]:
    seen = set()
    for _ in range(n):  # a fresh connection each time: the kernel picks a worker per connection
        health = await get_json(base + "/healthz")
        if health:
            seen.add(health["pid"])
    return seen


async def both_workers(base: str) -> set[int] | None:
    """The two workers' pids, once both have answered (None before)."""
    seen = await pids(base)
    return seen if len(seen) == 2 else None
