"""Shared state on a real 3-node Redis Cluster (`state.cluster: true`), started here from
`redis-server` on free ports: two gateways share one rpm limit exactly, one budget, and the
response cache; cache entries and breakers spread over the nodes."""

from __future__ import annotations

import asyncio
import contextlib
import random
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
import redis.asyncio as aioredis

from tests.conftest import ADMIN, APP_KEY, GatewayFactory, RunningGateway, Upstream
from tests.support.waiting import until
from tests.test_redis_state import HI, redis_up, shared

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None or shutil.which("redis-cli") is None,
    reason="redis-server and redis-cli are not installed; the cluster test starts its own")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(n: int) -> list[int]:
    """n free ports whose cluster bus ports (port + 10000) are free too."""
    ports: list[int] = []
    while len(ports) < n:
        port = random.randrange(20_000, 50_000)
        if port not in ports and _bindable(port) and _bindable(port + 10_000):
            ports.append(port)
    return ports


def _cluster_info(port: int) -> str:
    out = subprocess.run(["redis-cli", "-p", str(port), "cluster", "info"],
                         capture_output=True, text=True, timeout=10, check=False)
    return out.stdout


@contextlib.contextmanager
def _nodes(ports: list[int], work: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf",
                 "--cluster-node-timeout", "5000", "--dir", str(work), "--save", "",
                 "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield procs
    finally:
        for proc in procs:  # whatever happened above: no node outlives the test
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[int]]:
    ports = cluster_ports(3)
    with _nodes(ports, tmp_path):
        for port in ports:
            await until(lambda p=port: asyncio.to_thread(redis_up, p), f"node {port} to start")
        created = await asyncio.to_thread(subprocess.run, [
            "redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
            "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True, text=True, timeout=120, check=False)
        assert created.returncode == 0, created.stdout + created.stderr

        async def all_ok() -> bool:
            infos = await asyncio.gather(*(asyncio.to_thread(_cluster_info, p) for p in ports))
            return all("cluster_state:ok" in info for info in infos)

        await until(all_ok, "every node to report cluster_state:ok", timeout_s=120)
        yield ports


def cluster_config(upstream: Upstream, tmp: Path, ports: list[int]) -> dict[str, Any]:
    cfg = shared(upstream.url, tmp, f"redis://127.0.0.1:{ports[0]}/0", cluster=True)
    cfg["cache"] = {"enabled": False}
    return cfg


async def ask(session: aiohttp.ClientSession, gw: RunningGateway, **kw: Any) -> int:
    # One session (kept-alive connections) for the whole test: aiohttp's test server cancels a
    # handler whose client has gone, which could cut the accounting after an answer short.
    async with session.post(
            gw.url + "/chat/completions", headers={"Authorization": f"Bearer {APP_KEY}"},
            json={"model": "chat", "messages": HI, **kw}) as resp:
        await resp.read()
        return resp.status


async def test_two_gateways_share_one_rpm_limit_exactly(
        cluster: list[int], upstream: Upstream, make_gateway: GatewayFactory,
        tmp_path: Path) -> None:
    cfg = cluster_config(upstream, tmp_path, cluster)
    cfg["keys"][0]["rpm"] = 5
    cfg["teams"] = [{"name": "support", "rpm": 100}]     # the team's window sits in the slot too
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    async with aiohttp.ClientSession() as session:
        statuses = [await ask(session, one if i % 2 else two) for i in range(14)]
    assert (statuses.count(200), statuses.count(429)) == (5, 9)  # as with a single Redis
    assert len(upstream.models_called()) == 5


async def test_two_gateways_share_one_budget(
        cluster: list[int], upstream: Upstream, make_gateway: GatewayFactory,
        tmp_path: Path) -> None:
    cfg = cluster_config(upstream, tmp_path, cluster)
    cfg["keys"][0].update(budget_usd=0.00006, budget_period="day")
    cfg["teams"] = [{"name": "support", "budget_usd": 1.0}]
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    session = aiohttp.ClientSession()
    try:
        statuses = [await ask(session, one if i % 2 else two, max_tokens=20)
                    for i in range(12)]
        row = await until(lambda: ledger(one, 12), "both gateways' spend to be written")
    finally:
        await session.close()
    ok = statuses.count(200)
    assert ok > 0 and statuses.count(429) == 12 - ok
    assert row["succeeded"] == ok == len(upstream.models_called())
    assert row["cost_usd"] <= 0.00006 + 8 * 1e-6 + 20 * 2e-6  # budget + one request at most


async def ledger(gw: RunningGateway, n: int) -> dict[str, Any] | None:
    """The key's ledger row once it counts n requests (each gateway writes in batches)."""
    async with aiohttp.ClientSession() as session, session.get(
            gw.url.removesuffix("/v1") + "/admin/spend?group_by=key",
            headers={"Authorization": f"Bearer {ADMIN}"}) as resp:
        rows = (await resp.json())["data"]
    return rows[0] if rows and rows[0]["requests"] == n else None


async def keys_by_node(ports: list[int], pattern: str) -> dict[int, int]:
    counts = {}
    for port in ports:
        node = aioredis.Redis(port=port)
        try:
            counts[port] = len([k async for k in node.scan_iter(match=pattern)])
        finally:
            await node.aclose()
    return counts


async def test_the_cache_is_shared_and_spread_over_the_nodes(
        cluster: list[int], upstream: Upstream, make_gateway: GatewayFactory,
        tmp_path: Path) -> None:
    cfg = shared(upstream.url, tmp_path, f"redis://127.0.0.1:{cluster[0]}/0", cluster=True)
    prefix = cfg["state"]["key_prefix"]
    one, two = await make_gateway(cfg), await make_gateway(cfg)
    for i in range(12):
        messages = [{"role": "user", "content": f"question {i}"}]
        first = await one.client().chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0)
        second = await two.client().chat.completions.with_raw_response.create(
            model="chat", messages=messages, temperature=0)
        assert (first.headers["x-podium-cache"], second.headers["x-podium-cache"]) == (
            "miss", "hit")
    assert len(upstream.models_called()) == 12
    cached = await keys_by_node(cluster, prefix + "cache:*")
    assert sum(cached.values()) == 12
    assert sum(1 for n in cached.values() if n) >= 2, cached   # not all on one node

    # Breakers: one key per deployment, spread too, and read back across slots.
    states = one.gateway.state
    deps = [f"dep-{uuid.uuid4().hex[:6]}" for _ in range(12)]
    for dep in deps:
        await states.publish_breaker(dep, "open", 4_000_000_000.0)
    breakers = await keys_by_node(cluster, prefix + "breaker:*")
    assert sum(breakers.values()) == 12 and sum(1 for n in breakers.values() if n) >= 2
    seen = await two.gateway.state.breaker_updates(deps)
    assert seen == {dep: ("open", 4_000_000_000.0) for dep in deps}


async def test_an_unreachable_cluster_fails_closed_like_a_single_redis(
        upstream: Upstream, make_gateway: GatewayFactory, tmp_path: Path) -> None:
    """No node answers: `fail_mode: closed` refuses with 503, as with a single Redis."""
    [port] = cluster_ports(1)
    cfg = shared(upstream.url, tmp_path, f"redis://127.0.0.1:{port}/0", cluster=True,
                 fail_mode="closed")
    cfg["keys"][0]["rpm"] = 5
    gw = await make_gateway(cfg, ready=False)
    with pytest.raises(openai.InternalServerError) as info:
        await gw.client().chat.completions.create(model="chat", messages=HI)
    assert info.value.status_code == 503
    assert info.value.body["code"] == "state_unavailable"
