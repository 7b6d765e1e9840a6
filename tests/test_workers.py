"""`podium serve --workers N`: real processes on one port; restart on crash; drain on SIGTERM."""

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

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulator import RECORDED, SimModel, start_simulator
from tests.conftest import APP_KEY, base_config, deployment
from tests.test_call import closed_port

ROOT = Path(__file__).resolve().parents[1]


async def until(condition: Any, what: str, timeout_s: float = 30.0) -> Any:
    """Poll a real condition (bounded) instead of sleeping for a guessed time."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def get_json(url: str) -> Any:
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None


@pytest.fixture
async def pool(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    runner, sim_port = await start_simulator("127.0.0.1", 0, {"sim-slow": SimModel(1000)})
    url = f"http://127.0.0.1:{sim_port}/v1"
    config = base_config(url)
    config["model_list"].append(deployment("slow", "sim-slow", url))
    config["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    config["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    try:
        async with running_pool(config, tmp_path) as (proc, base):
            yield {"base": base, "proc": proc, "upstream": runner}
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_pool(config: dict[str, Any], tmp_path: Path, log: Path | None = None,
                       ) -> AsyncIterator[tuple[subprocess.Popen[bytes], str]]:
    """`podium serve --workers 2` on `config`, ready; the whole process group stopped after.
    Its stderr (the logs) goes to `log` when given."""
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config))
    port = closed_port()
    with (log or Path(os.devnull)).open("wb") as stderr:
        proc = subprocess.Popen(  # noqa: ASYNC220 - Popen returns at once; the wait is async
            [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port",
             str(port), "--workers", "2"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=stderr,
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
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything that did not drain in time
    proc.wait(timeout=30)


async def pids(base: str, n: int = 40) -> set[int]:
    seen = set()
    for _ in range(n):  # a fresh connection each time: the kernel picks a worker per connection
        health = await get_json(base + "/healthz")
        if health:
            seen.add(health["pid"])
    return seen


async def test_two_workers_share_the_port(pool: dict[str, Any]) -> None:
    workers = await until(lambda: _two(pool["base"]), "both workers to answer")
    assert len(workers) == 2 and pool["proc"].pid not in workers
    client = openai.AsyncOpenAI(base_url=pool["base"] + "/v1", api_key=APP_KEY, max_retries=0)
    answers = await asyncio.gather(*(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(10)))
    assert [a.choices[0].message.content.endswith(f"q{i}") for i, a in enumerate(answers)] == \
        [True] * 10
    # Whichever worker answers the scrape, it reports the whole pool's requests.
    for _ in range(4):
        async with aiohttp.ClientSession() as session, session.get(
                pool["base"] + "/metrics") as resp:
            text = await resp.text()
        counted = sum(s.value for f in text_string_to_metric_families(text)
                      for s in f.samples if s.name == "podium_requests_total")
        assert counted == 10


async def _two(base: str) -> set[int] | None:
    seen = await pids(base)
    return seen if len(seen) == 2 else None


async def test_a_crashed_worker_is_restarted(pool: dict[str, Any]) -> None:
    first = await until(lambda: _two(pool["base"]), "both workers to answer")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int] | None:
        seen = await _two(pool["base"])
        return seen if seen and victim not in seen else None

    now = await until(replaced, "a new worker to replace the killed one")
    assert len(now - first) == 1


async def test_sigterm_drains_an_in_flight_stream(pool: dict[str, Any]) -> None:
    client = openai.AsyncOpenAI(base_url=pool["base"] + "/v1", api_key=APP_KEY, max_retries=0)

    async def slow_stream() -> str:
        stream = await client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "take your time"}])
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    pending = asyncio.create_task(slow_stream())
    recorded = pool["upstream"].app[RECORDED]

    async def arrived() -> bool:
        return any(isinstance(r.body, dict) and r.body.get("model") == "sim-slow"
                   for r in recorded)

    await until(arrived, "the slow request to reach the upstream")
    pool["proc"].send_signal(signal.SIGTERM)
    text = await asyncio.wait_for(pending, 30)
    assert text == "Simulated answer from sim-slow: take your time"
    code = await asyncio.to_thread(pool["proc"].wait, 30)
    assert code == 0
    assert await get_json(pool["base"] + "/healthz") is None, "nothing listens any more"


async def test_workers_do_not_outlive_a_killed_supervisor(pool: dict[str, Any]) -> None:
    workers = await until(lambda: _two(pool["base"]), "both workers to answer")
    pool["proc"].kill()  # SIGKILL: the supervisor cannot pass anything on
    await asyncio.to_thread(pool["proc"].wait, 30)

    async def all_gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in workers)  # noqa: ASYNC240

    await until(all_gone, "the orphaned workers to stop by themselves")


async def test_workers_with_memory_state_warn_that_limits_multiply(tmp_path: Path) -> None:
    config = base_config("http://127.0.0.1:9/v1")
    config["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    config["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    log = tmp_path / "stderr.log"
    async with running_pool(config, tmp_path, log):
        pass
    lines = [line for line in log.read_text().splitlines() if "state.backend is memory" in line]
    assert len(lines) == 1, log.read_text()[-2000:]  # once, from the supervisor
    assert "every rpm, tpm and budget is effectively multiplied by 2" in lines[0]
    assert "state.backend: redis" in lines[0]
