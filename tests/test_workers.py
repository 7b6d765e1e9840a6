"""`podium serve --workers N`: real processes on one port; restart on crash; drain on SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.simulator import RECORDED, SimModel, start_simulator
from tests.conftest import APP_KEY, base_config, deployment
from tests.support.net import get_json
from tests.support.pool import both_workers, running_pool
from tests.support.waiting import CEILING_S, until


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


async def test_two_workers_share_the_port(pool: dict[str, Any]) -> None:
    workers = await until(lambda: both_workers(pool["base"]), "both workers to answer")
    assert len(workers) == 2 and pool["proc"].pid not in workers
    client = openai.AsyncOpenAI(base_url=pool["base"] + "/v1", api_key=APP_KEY, max_retries=0)
    answers = await asyncio.gather(*(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": f"q{i}"}]) for i in range(10)))
    assert [a.choices[0].message.content.endswith(f"q{i}") for i, a in enumerate(answers)] == \
        [True] * 10
    # Whichever worker answers the scrape, it reports the whole pool's requests (the other
    # worker's within a second: its snapshot).
    await until(lambda: pool_counts(pool["base"], 10), "the scrape to count all 10 requests")
    for _ in range(4):
        assert await requests_counted(pool["base"]) == 10


async def requests_counted(base: str) -> float:
    """podium_requests_total summed, from one scrape (on a fresh connection: either worker)."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as resp:
        text = await resp.text()
    return sum(s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name == "podium_requests_total")


async def pool_counts(base: str, expected: float) -> bool:
    return await requests_counted(base) == expected


async def chat_once(base: str) -> str:
    """One chat request on a connection of its own (so the kernel picks a worker for it);
    the answering process, from its request id's per-process prefix."""
    async with aiohttp.ClientSession() as session, session.post(
            base + "/v1/chat/completions", headers={"Authorization": f"Bearer {APP_KEY}"},
            json={"model": "chat", "messages": [{"role": "user", "content": "hi"}]}) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["x-request-id"][:20]   # "req_" and the process's prefix


async def test_one_scrape_counts_both_workers_and_survives_a_restart(
        pool: dict[str, Any]) -> None:
    """Requests answered by both workers are all in any one scrape; a worker killed and
    replaced takes none of its counts with it (counters never go backwards)."""
    base = pool["base"]
    await until(lambda: both_workers(base), "both workers to answer")
    answered_by: list[str] = []
    while len(set(answered_by)) < 2:
        assert len(answered_by) < 200, "every request went to one worker"
        answered_by.append(await chat_once(base))
    sent = len(answered_by)
    await until(lambda: pool_counts(base, sent), f"one scrape to count all {sent} requests")
    before = await until(lambda: both_workers(base), "both workers to answer")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int] | None:
        seen = await both_workers(base)
        return seen if seen and victim not in seen else None

    await until(replaced, "a new worker to replace the killed one")
    for _ in range(4):   # whichever worker answers: the killed one's requests still count
        assert await requests_counted(base) == sent
    answered_by.append(await chat_once(base))
    await until(lambda: pool_counts(base, sent + 1), "the count to go on from there")


async def test_a_crashed_worker_is_restarted(pool: dict[str, Any]) -> None:
    first = await until(lambda: both_workers(pool["base"]), "both workers to answer")
    victim = min(first)
    os.kill(victim, signal.SIGKILL)

    async def replaced() -> set[int] | None:
        seen = await both_workers(pool["base"])
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
    text = await asyncio.wait_for(pending, CEILING_S)
    assert text == "Simulated answer from sim-slow: take your time"
    code = await asyncio.to_thread(pool["proc"].wait, CEILING_S)
    assert code == 0
    assert await get_json(pool["base"] + "/healthz") is None, "nothing listens any more"


async def test_workers_do_not_outlive_a_killed_supervisor(pool: dict[str, Any]) -> None:
    workers = await until(lambda: both_workers(pool["base"]), "both workers to answer")
    pool["proc"].kill()  # SIGKILL: the supervisor cannot pass anything on
    await asyncio.to_thread(pool["proc"].wait, CEILING_S)

    async def all_gone() -> bool:
        return not any(os.path.exists(f"/proc/{pid}") for pid in workers)  # noqa: ASYNC240

    await until(all_gone, "the orphaned workers to stop by themselves")


async def test_workers_with_memory_state_warn_that_limits_multiply(tmp_path: Path) -> None:
    config = base_config("http://127.0.0.1:9/v1")
    config["storage"] = {"path": str(tmp_path / "podium.sqlite3")}
    config["key_store"] = {"path": str(tmp_path / "keys.sqlite3")}
    log = tmp_path / "stderr.log"
    async with running_pool(config, tmp_path, log=log):
        pass
    lines = [line for line in log.read_text().splitlines() if "state.backend is memory" in line]
    assert len(lines) == 1, log.read_text()[-2000:]  # once, from the supervisor
    assert "every rpm, tpm and budget is effectively multiplied by 2" in lines[0]
    assert "state.backend: redis" in lines[0]
