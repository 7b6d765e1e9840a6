"""Shared state in the real Redis on 127.0.0.1:6379: limits, budgets, cache and breakers held
together by several gateways; and a private redis-server stopped mid-run."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ADMIN, APP_KEY, GatewayFactory, Upstream, base_config, deployment
from tests.support.net import free_port, get_json
from tests.support.pool import both_workers, running_pool
from tests.support.waiting import CEILING_S, until

ROOT = Path(__file__).resolve().parents[1]
HI = [{"role": "user", "content": "hi"}]


def redis_up(port: int = 6379) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_redis = pytest.mark.skipif(not redis_up(), reason="Redis is not running on "
                                 "127.0.0.1:6379; the shared-state tests need a real Redis")


def shared(url: str, tmp: Path, redis_url: str = "redis://127.0.0.1:6379/0",
           **state: Any) -> dict[str, Any]:
    cfg = base_config(url)
    cfg["state"] = {"backend": "redis", "url": redis_url,
                    "key_prefix": f"podium-test:{uuid.uuid4().hex}:", **state}
    cfg["storage"] = {"path": str(tmp / "podium.sqlite3")}
    cfg["key_store"] = {"path": str(tmp / "keys.sqlite3")}
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    return cfg


@pytest.fixture
async def pool_of_two(tmp_path: Path, upstream: Upstream,
                      request: pytest.FixtureRequest) -> AsyncIterator[str]:
    cfg = shared(upstream.url, tmp_path)
    cfg["keys"][0].update(request.param)
    cfg["cache"] = {"enabled": False}
    async with running_pool(cfg, tmp_path) as (_, base):
        await until(lambda: both_workers(base), "both workers to be listening")
        yield base


async def fire(base: str, n: int, **kw: Any) -> tuple[int, int, set[int]]:
    """n requests, each on a fresh connection (so both workers take some); returns
    (successes, refusals, worker pids seen)."""
    ok = refused = 0
    pids = set()
    for _ in range(n):
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/healthz") as resp:
                pids.add((await resp.json())["pid"])
            async with session.post(base + "/v1/chat/completions",
                                    headers={"Authorization": f"Bearer {APP_KEY}"},
                                    json={"model": "chat", "messages": HI, **kw}) as resp:
                ok += resp.status == 200
                refused += resp.status == 429
    return ok, refused, pids


@needs_redis
@pytest.mark.parametrize("pool_of_two", [{"rpm": 5}], indirect=True)
async def test_two_workers_enforce_one_rpm_limit(pool_of_two: str, upstream: Upstream) -> None:
    ok, refused, pids = await fire(pool_of_two, 14)
    assert len(pids) == 2, "both workers took requests"
    assert (ok, refused) == (5, 9)
    assert len(upstream.models_called()) == 5


@needs_redis
@pytest.mark.parametrize("pool_of_two", [{"budget_usd": 0.00006, "budget_period": "day"}],
                         indirect=True)
async def test_two_workers_enforce_one_budget(pool_of_two: str, upstream: Upstream) -> None:
    ok, refused, _ = await fire(pool_of_two, 12, max_tokens=20)
    assert ok > 0 and refused > 0 and ok + refused == 12

    async def ledger() -> dict[str, Any] | None:
        # Each worker writes its spend in batches (every 0.2 s): wait until both have.
        async with aiohttp.ClientSession() as session, session.get(
                pool_of_two + "/admin/spend?group_by=key",
                headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
            rows = (await resp.json())["data"]
        return rows[0] if rows and rows[0]["requests"] == 12 else None

    row = await until(ledger, "both workers' spend to be written")
    assert row["succeeded"] == ok == len(upstream.models_called())
    # The most one request can cost here: sim-dear's prices at 20 output tokens.
    assert row["cost_usd"] <= 0.00006 + 8 * 1e-6 + 20 * 2e-6


@needs_redis
async def test_cache_is_shared(upstream: Upstream, make_gateway: GatewayFactory,
                               tmp_path: Path) -> None:
    cfg = shared(upstream.url, tmp_path)
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    first = await one.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, temperature=0)
    second = await two.client().chat.completions.with_raw_response.create(
        model="chat", messages=HI, temperature=0)
    assert (first.headers["x-podium-cache"], second.headers["x-podium-cache"]) == ("miss",
                                                                                   "hit")
    assert len(upstream.models_called()) == 1


@needs_redis
async def test_a_breaker_opened_by_one_is_respected_by_the_other(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    cfg = shared(upstream.url, tmp_path)
    cfg["model_list"][:2] = [
        deployment("chat", "sim-dead", f"http://127.0.0.1:{free_port()}/v1",
                   input_cost_per_token=1e-9),
        deployment("chat", "sim-ok", upstream.url, input_cost_per_token=1e-7)]
    cfg["routing"] = {"breaker": {"failures": 1, "cooldown_s": 60}}
    cfg["cache"] = {"enabled": False}
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    await one.client().chat.completions.create(model="chat", messages=HI)

    async def open_on_two() -> bool:
        async with aiohttp.ClientSession() as session, session.post(
                two.url + "/route/explain", json={"model": "chat", "messages": HI},
                headers={"Authorization": f"Bearer {APP_KEY}"}) as resp:
            decision = await resp.json()
        return decision["chain"] == ["sim-ok"]

    await until(open_on_two, "the second gateway to see the breaker open")
    raw = await two.client().chat.completions.with_raw_response.create(model="chat",
                                                                       messages=HI)
    assert raw.headers["x-podium-attempts"] == "1"
    assert "sim-dead" not in upstream.models_called()


@pytest.fixture
def private_redis() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed; cannot run a private Redis to stop")
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port, proc
    finally:
        proc.kill()
        proc.wait(timeout=CEILING_S)


@pytest.mark.parametrize("fail_mode", ["open", "closed"])
async def test_redis_stopped_mid_run(upstream: Upstream, make_gateway: GatewayFactory,
                                     tmp_path: Path, fail_mode: str,
                                     private_redis: tuple[int, subprocess.Popen[bytes]]) -> None:
    port, proc = private_redis

    async def pong() -> bool:
        return redis_up(port)

    await until(pong, "the private redis-server to start")
    cfg = shared(upstream.url, tmp_path, f"redis://127.0.0.1:{port}/0", fail_mode=fail_mode)
    cfg["keys"][0]["rpm"] = 100
    gw = await make_gateway(cfg)
    client = gw.client()
    await client.chat.completions.create(model="chat", messages=HI)
    proc.kill()
    proc.wait(timeout=CEILING_S)
    base = gw.url.removesuffix("/v1")
    if fail_mode == "open":
        raw = await client.chat.completions.with_raw_response.create(
            model="chat", messages=[{"role": "user", "content": "still there?"}], temperature=0)
        assert raw.parse().choices[0].message.content.endswith("still there?")
        assert raw.headers["x-podium-cache"] == "miss"
        ready = await get_json(base + "/readyz")
        assert ready["state"] == "redis unreachable, failing open"
    else:
        with pytest.raises(openai.InternalServerError) as info:
            await client.chat.completions.create(model="chat", messages=HI)
        assert info.value.status_code == 503
        assert info.value.body["code"] == "state_unavailable"
        async with aiohttp.ClientSession() as session, session.get(base + "/readyz") as resp:
            assert resp.status == 503
            assert (await resp.json())["state"] == "redis unreachable, failing closed"


def start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    """A redis-server that keeps its data in `data` across a SHUTDOWN SAVE and a restart."""
    return subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--dir", str(data), "--dbfilename", "dump.rdb", "--save", "",
                             "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def test_budget_counters_are_reconciled_from_the_ledger_after_an_outage(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server/redis-cli are not installed; cannot restart a private Redis")
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    procs = [start_redis(port, data)]
    try:
        await until(lambda: asyncio.to_thread(redis_up, port), "the private redis to start")
        # Each request reserves ~4.7e-5 (sim-dear's price) and costs ~1.9e-6 (sim-cheap).
        budget = 0.00006
        cfg = shared(upstream.url, tmp_path, f"redis://127.0.0.1:{port}/0", fail_mode="open")
        cfg["keys"][0].update(budget_usd=budget, budget_period="day")
        cfg["cache"] = {"enabled": False}
        gw = await make_gateway(cfg)
        client = gw.client()

        async def spend() -> float:
            raw = await client.chat.completions.with_raw_response.create(
                model="chat", messages=HI, max_tokens=20)
            return float(raw.headers["x-podium-cost-usd"])

        async def ledger(n: int) -> bool:
            async with aiohttp.ClientSession() as session, session.get(
                    gw.url.removesuffix("/v1") + "/admin/spend?group_by=key",
                    headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
                rows = (await resp.json())["data"]
            return bool(rows) and rows[0]["requests"] == n

        before = await spend()                      # the counter in Redis: one request's cost
        await until(lambda: ledger(1), "the first request to be settled")
        await asyncio.to_thread(subprocess.run, ["redis-cli", "-p", str(port), "shutdown",
                                                 "save"], check=False, capture_output=True,
                                timeout=30)
        await asyncio.to_thread(procs[0].wait, 30)
        during = [await spend() for _ in range(8)]  # served open: the counter misses these
        await until(lambda: ledger(9), "the ledger to hold every answered request")
        procs.append(start_redis(port, data))       # back, with the counter it had
        await until(lambda: asyncio.to_thread(redis_up, port), "the private redis to restart")
        reserve = 0.0000470
        assert before + reserve <= budget < before + sum(during) + reserve  # the premise
        with pytest.raises(openai.RateLimitError) as info:
            await spend()
        assert info.value.body["code"] == "budget_exceeded"
        spent = f"${before + sum(during):.6f} spent"
        assert spent in info.value.body["message"]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
