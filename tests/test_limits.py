"""The in-process limiter and budget state (`gateway/storage/memory_state.py`, `buckets.py`):
exact at the N+1-th request, Retry-After to the bucket, refunds into the right bucket,
reservations that lapse without a scan, and memory that stays flat whatever the traffic.

These drive the state through its own clock (the `clock` it is built with), so a minute of
traffic at 1,000 requests a second takes a fraction of a real second."""

from __future__ import annotations

import tracemalloc
from collections.abc import Awaitable, Callable

import pytest

from gateway.observability.metrics import MAX_SERIES, Metrics
from gateway.storage.contracts import (
    RESERVATION_TTL_S,
    BudgetClaim,
    BudgetRefusal,
    BudgetReservation,
    WindowCheck,
)
from gateway.storage.memory_state import MemoryState


class Clock:
    def __init__(self, now: float = 1_700_000_000.25) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def state_at(clock: Clock) -> MemoryState:
    state = MemoryState.with_cache(10, 1000)
    state.clock = clock
    return state


def rpm(n: float, key: str = "key:k1:rpm") -> WindowCheck:
    return WindowCheck(key, n, 1.0)


async def test_the_n_plus_first_request_waits_until_its_bucket_leaves() -> None:
    clock = Clock(1000.25)
    state = state_at(clock)
    for _ in range(3):                                    # bucket 1000
        assert (await state.admit("k1", [rpm(3)])).bucket == 1000
        clock.now += 0.2
    refused = await state.admit("k1", [rpm(3)])           # at 1000.85, still bucket 1000
    assert refused.full == "key:k1:rpm" and refused.bucket is None
    # Bucket 1000 leaves when bucket 1060 starts: 59.15 s from now, to the bucket.
    assert refused.wait_s == pytest.approx(1060.0 - 1000.85)
    clock.now = 1059.99
    assert (await state.admit("k1", [rpm(3)])).wait_s > 0
    clock.now = 1060.0
    assert (await state.admit("k1", [rpm(3)])).wait_s == 0


async def test_retry_after_waits_for_as_many_buckets_as_the_amount_needs() -> None:
    clock = Clock(2000.0)
    state = state_at(clock)
    tpm = WindowCheck("key:k1:tpm", 100, 40)
    await state.admit("k1", [tpm])                        # bucket 2000: 40
    clock.now = 2010.5
    await state.admit("k1", [tpm])                        # bucket 2010: 40
    clock.now = 2020.0
    big = WindowCheck("key:k1:tpm", 100, 90)              # needs both buckets gone
    assert (await state.admit("k1", [big])).wait_s == pytest.approx(2070.0 - 2020.0)
    small = WindowCheck("key:k1:tpm", 100, 50)            # needs the first one gone
    assert (await state.admit("k1", [small])).wait_s == pytest.approx(2060.0 - 2020.0)


async def test_a_refusal_counts_nowhere_and_every_window_must_have_room() -> None:
    state = state_at(Clock())
    key, team = rpm(5, "key:k1:rpm"), rpm(2, "team:t:rpm")
    assert (await state.admit("t", [key, team])).wait_s == 0
    assert (await state.admit("t", [key, team])).wait_s == 0
    refused = await state.admit("t", [key, team])
    assert refused.full == "team:t:rpm"
    # The key's window did not count the refused request: 3 more fit on their own.
    for _ in range(3):
        assert (await state.admit("t", [key])).wait_s == 0
    assert (await state.admit("t", [key])).wait_s > 0


async def test_a_tpm_refund_lands_in_the_bucket_it_was_reserved_in() -> None:
    clock = Clock(3000.5)
    state = state_at(clock)
    reserve = WindowCheck("key:k1:tpm", 1000, 600)
    first = await state.admit("k1", [reserve])
    clock.now = 3030.0                                    # half a minute later
    assert (await state.admit("k1", [reserve])).wait_s > 0  # 600 + 600 > 1000
    assert first.bucket is not None
    await state.settle_windows("k1", ["key:k1:tpm"], first.bucket, 150 - 600)  # used 150
    second = await state.admit("k1", [reserve])           # 150 + 600 fits
    assert second.wait_s == 0
    # The refund left with the first request's bucket, not with the refunding moment's:
    # at 3060 only the second request's 600 remains, so 400 fit and 401 do not.
    clock.now = 3060.0
    assert (await state.admit("k1", [WindowCheck("key:k1:tpm", 1000, 401)])).wait_s > 0
    assert (await state.admit("k1", [WindowCheck("key:k1:tpm", 1000, 400)])).wait_s == 0


async def test_a_settle_after_its_bucket_left_changes_nothing() -> None:
    clock = Clock(4000.0)
    state = state_at(clock)
    old = await state.admit("k1", [WindowCheck("key:k1:tpm", 1000, 900)])
    clock.now = 4065.0
    assert (await state.admit("k1", [WindowCheck("key:k1:tpm", 1000, 1000)])).wait_s == 0
    assert old.bucket is not None
    await state.settle_windows("k1", ["key:k1:tpm"], old.bucket, -900)  # a late refund
    assert (await state.admit("k1", [WindowCheck("key:k1:tpm", 1000, 1)])).wait_s > 0


def budget(scope: str, usd: float, spent: float = 0.0) -> BudgetClaim:
    async def load() -> float:
        return spent

    return BudgetClaim(scope, usd, 0.0, float("inf"), load)


async def test_a_reservation_lapses_at_its_ttl_without_being_settled() -> None:
    clock = Clock(5000.0)
    state = state_at(clock)
    claim = budget("key:k1:total", 1.0)
    assert isinstance(await state.reserve("k1", [claim], 0.8), BudgetReservation)  # never settled
    refused = await state.reserve("k1", [claim], 0.3)
    assert isinstance(refused, BudgetRefusal) and refused.reserved == pytest.approx(0.8)
    clock.now += RESERVATION_TTL_S - 60.0                 # within the TTL, to the minute
    assert isinstance(await state.reserve("k1", [claim], 0.3), BudgetRefusal)
    clock.now += 60.0
    assert isinstance(await state.reserve("k1", [claim], 0.3), BudgetReservation)


async def test_settling_releases_exactly_the_reservation_and_counts_the_cost() -> None:
    clock = Clock(6000.0)
    state = state_at(clock)
    claims = [budget("key:k1:total", 1.0, spent=0.1), budget("team:t:total", 5.0)]
    held = await state.reserve("t", claims, 0.5)
    assert isinstance(held, BudgetReservation)
    other = await state.reserve("t", claims, 0.3)
    assert isinstance(other, BudgetReservation)
    await state.settle("t", claims, held, 0.2)
    assert await state.standing("t", claims[0]) == (pytest.approx(0.3), pytest.approx(0.3))
    assert await state.standing("t", claims[1]) == (pytest.approx(0.2), pytest.approx(0.3))
    await state.settle("t", claims, None, 0.0)           # a request refused before reserving
    assert await state.standing("t", claims[0]) == (pytest.approx(0.3), pytest.approx(0.3))


Drive = Callable[[MemoryState, Clock, float, float], Awaitable[int]]


async def drive(state: MemoryState, clock: Clock, rate: float, seconds: float) -> int:
    """One key at `rate` requests a second for `seconds` (of the state's clock): rpm and tpm
    windows for the key and its team, each request settled to a smaller real usage."""
    checks = [WindowCheck("key:k1:rpm", 1e9, 1.0), WindowCheck("key:k1:tpm", 1e12, 300.0),
              WindowCheck("team:t:rpm", 1e9, 1.0), WindowCheck("team:t:tpm", 1e12, 300.0)]
    claims = [budget("key:k1:month", 1e9), budget("team:t:month", 1e9)]
    n = int(rate * seconds)
    for _ in range(n):
        clock.now += 1.0 / rate
        admitted = await state.admit("t", checks)
        held = await state.reserve("t", claims, 0.01)
        assert admitted.bucket is not None and isinstance(held, BudgetReservation)
        await state.settle_windows("t", ["key:k1:tpm", "team:t:tpm"], admitted.bucket, -180.0)
        await state.settle("t", claims, held, 0.004)
    return n


def limiter_bytes() -> int:
    """Memory held by the storage package's allocations (the limiter and budget state)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*gateway/storage/*")])
    return sum(stat.size for stat in snapshot.statistics("filename"))


async def test_limiter_memory_is_flat_against_the_rate() -> None:
    clock = Clock()
    state = state_at(clock)
    tracemalloc.start()
    try:
        await drive(state, clock, 40.0, 2.0)              # every window and ring exists
        base = limiter_bytes()
        slow = await drive(state, clock, 40.0, 65.0)      # 2,600 requests over a window
        at_slow = limiter_bytes()
        fast = await drive(state, clock, 400.0, 65.0)     # 26,000 over the next one
        at_fast = limiter_bytes()
    finally:
        tracemalloc.stop()
    assert fast == 10 * slow
    # A log of entries costs ~100 bytes a request: 24,000 in a window would be megabytes.
    assert at_slow - base < 2048, (base, at_slow)
    assert at_fast - at_slow < 2048, (at_slow, at_fast)


async def test_idle_scopes_are_forgotten() -> None:
    clock = Clock()
    state = state_at(clock)
    for i in range(5000):
        await state.admit(f"k{i}", [rpm(10, f"key:k{i}:rpm")])
        await state.reserve(f"k{i}", [budget(f"key:k{i}:month", 1.0)], 0.1)
    assert len(state._windows) == 5000
    clock.now += 61.0
    await state.admit("k0", [rpm(10, "key:k0:rpm")])
    assert len(state._windows) == 1                      # the rest had emptied
    clock.now += RESERVATION_TTL_S
    await state.reserve("k0", [budget("key:k0:month", 1.0)], 0.1)
    assert (len(state._reserved), len(state._spent)) == (1, 1)


async def test_a_new_budget_period_replaces_the_old_one() -> None:
    clock = Clock()
    state = state_at(clock)
    for day in range(30):
        async def load() -> float:
            return 0.0

        claim = BudgetClaim("key:k1:day", 1.0, day * 86400.0, (day + 1) * 86400.0, load)
        held = await state.reserve("k1", [claim], 0.1)
        assert isinstance(held, BudgetReservation)
        await state.settle("k1", [claim], held, 0.05)
        assert await state.standing("k1", claim) == (pytest.approx(0.05), 0.0)
    assert len(state._spent) == 1


def test_metrics_keep_at_most_max_series_label_sets() -> None:
    metrics = Metrics(["support"])
    for i in range(MAX_SERIES * 3):
        metrics.attempt(f"dep_{i}", 0.01, "server")       # a label that turned out unbounded
    text = metrics.exposition().decode()
    series = [line for line in text.splitlines()
              if line.startswith("podium_fallbacks_total{")]
    assert len(series) == MAX_SERIES + 1
    assert 'podium_fallbacks_total{deployment="other",kind="other"} 2000.0' in series
