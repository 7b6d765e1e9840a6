"""Rate-limit windows and budgets in the real Redis on 127.0.0.1:6379 cost constant memory and
constant work, whatever the traffic: a window is one hash of at most 60 buckets, and refusing
a request reads that hash, not the requests in the window."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from gateway.storage import redis_scripts as lua
from gateway.storage.contracts import (
    WINDOW_BUCKETS,
    WINDOW_S,
    BudgetClaim,
    BudgetReservation,
    WindowCheck,
)
from gateway.storage.redis_state import RedisState
from tests.test_redis_state import needs_redis

pytestmark = needs_redis
URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def state() -> AsyncIterator[tuple[RedisState, str]]:
    prefix = f"podium-test:{uuid.uuid4().hex}:"
    st = RedisState(aioredis.from_url(URL), prefix, "closed", 1 << 20, "127.0.0.1:6379")
    yield st, prefix
    cleanup = aioredis.from_url(URL)
    keys = [k async for k in cleanup.scan_iter(match=prefix + "*")]
    if keys:
        await cleanup.delete(*keys)
    await cleanup.aclose()
    await st.close()


async def usage(prefix: str) -> dict[str, int]:
    """MEMORY USAGE of every key under the prefix."""
    client = aioredis.from_url(URL)
    try:
        keys = [k async for k in client.scan_iter(match=prefix + "*")]
        return {k.decode(): int(await client.memory_usage(k, samples=0) or 0) for k in keys}
    finally:
        await client.aclose()


def budget(scope: str, usd: float) -> BudgetClaim:
    async def nothing_spent() -> float:
        return 0.0

    return BudgetClaim(scope, usd, 0.0, float("inf"), nothing_spent)


CHECKS = [WindowCheck("key:k1:rpm", 1e9, 1.0), WindowCheck("key:k1:tpm", 1e12, 300.0),
          WindowCheck("team:t:rpm", 1e9, 1.0), WindowCheck("team:t:tpm", 1e12, 300.0)]
CLAIMS = [budget("key:k1:total", 1e9), budget("team:t:total", 1e9)]


async def one_request(st: RedisState) -> None:
    """What the rate-limit and budget plugins do for one request under key k1 of team t."""
    admitted = await st.admit("team:t", CHECKS)
    held = await st.reserve("team:t", CLAIMS, 0.01)
    assert admitted.bucket is not None and isinstance(held, BudgetReservation)
    await st.settle_windows("team:t", ["key:k1:tpm", "team:t:tpm"], admitted.bucket, -150.0)
    await st.settle("team:t", CLAIMS, held, 0.004)


async def requests(st: RedisState, n: int) -> None:
    for start in range(0, n, 50):  # 50 at a time, as concurrent requests would be
        await asyncio.gather(*(one_request(st) for _ in range(min(50, n - start))))


async def test_window_memory_is_constant_in_the_request_count(
        state: tuple[RedisState, str]) -> None:
    st, prefix = state
    await requests(st, 500)
    early = await usage(prefix)
    await requests(st, 4500)
    late = await usage(prefix)
    windows = {k: v for k, v in late.items() if ":win:" in k}
    assert len(windows) == 4 and len(late) == 8   # 4 windows; 2 counters + 2 reservation hashes
    assert sum(windows.values()) < 16 * 1024, windows
    # A member per request would add ~100 bytes each: 4,500 more requests, 400+ KB more.
    assert sum(late.values()) - sum(early.values()) < 4096, (early, late)
    spent, _ = await st.standing("team:t", CLAIMS[0])
    assert spent == pytest.approx(5000 * 0.004)


async def fill(st: RedisState, prefix: str, key: str, n: int) -> None:
    """Count n requests in one rpm window, pipelined, through Podium's own admission script."""
    client = aioredis.from_url(URL)
    script = client.register_script(lua.ADMIT)
    try:
        await script(keys=[f"{prefix}{{key:k1}}:win:{key}"],
                     args=[WINDOW_S / WINDOW_BUCKETS, WINDOW_BUCKETS, n, 1])  # loads it
        for start in range(1, n, 5000):
            async with client.pipeline(transaction=False) as pipe:
                for _ in range(min(5000, n - start)):
                    pipe.evalsha(script.sha, 1, f"{prefix}{{key:k1}}:win:{key}",
                                 WINDOW_S / WINDOW_BUCKETS, WINDOW_BUCKETS, n, 1)
                await pipe.execute()
    finally:
        await client.aclose()


async def refusal_times(st: RedisState, key: str, limit: int, times: int = 200) -> list[float]:
    out = []
    for _ in range(times):
        started = time.perf_counter()
        refused = await st.admit("key:k1", [WindowCheck(key, limit, 1.0)])
        out.append(time.perf_counter() - started)
        assert refused.wait_s > 0
    return out


async def test_a_refusal_costs_the_same_with_100_or_100000_requests_in_the_window(
        state: tuple[RedisState, str]) -> None:
    st, prefix = state
    await fill(st, prefix, "key:k1:rpm", 100)
    await fill(st, prefix, "key:k1:big", 100_000)
    client = aioredis.from_url(URL)
    try:  # the windows really are full: every bucket's count adds up to the limit
        for key, n in (("key:k1:rpm", 100), ("key:k1:big", 100_000)):
            window = await client.hgetall(f"{prefix}{{key:k1}}:win:{key}")
            buckets = [float(v) for f, v in window.items() if f not in (b"sum", b"head")]
            assert sum(buckets) == float(window[b"sum"]) == n
            assert len(buckets) <= WINDOW_BUCKETS
    finally:
        await client.aclose()
    small = statistics.median(await refusal_times(st, "key:k1:rpm", 100))
    large = statistics.median(await refusal_times(st, "key:k1:big", 100_000))
    # A script that read the window would take ~1000x longer at 100,000; here the same work.
    assert large / small < 3, (small, large)
