"""Shared state kept in this process (`state.backend: memory`, the default): exact, fast, and
not shared with other workers or machines. See `contracts.SharedState` for what it promises.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cachetools import TLRUCache

from gateway.storage.buckets import IdleMap, SlidingWindow
from gateway.storage.contracts import (
    RESERVATION_BUCKETS,
    RESERVATION_TTL_S,
    WINDOW_BUCKETS,
    WINDOW_S,
    Admission,
    BudgetClaim,
    BudgetRefusal,
    BudgetReservation,
    CacheStore,
    WindowCheck,
)


@dataclass(frozen=True, slots=True)
class _CacheEntry:
    value: bytes
    expires_at: float


class MemoryCache:
    """Bounded by entry count and by bytes; each entry keeps its own TTL."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._max_entries = max_entries
        self._cache: TLRUCache[str, _CacheEntry] = TLRUCache(
            maxsize=max_bytes, ttu=lambda _k, entry, _now: entry.expires_at,
            timer=time.monotonic, getsizeof=lambda entry: len(entry.value) or 1)

    async def get(self, key: str) -> bytes | None:
        entry = self._cache.get(key)
        return entry.value if entry is not None else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) > self._cache.maxsize:
            return  # larger than the whole cache: never stored
        while len(self._cache) >= self._max_entries and key not in self._cache:
            self._cache.popitem()
        self._cache[key] = _CacheEntry(value, time.monotonic() + ttl_s)

    @property
    def bytes_used(self) -> float:
        return self._cache.currsize

    def __len__(self) -> int:
        return len(self._cache)


# A scope's spend is kept while its budget is in use; an idle one is dropped and re-read from
# the ledger (flushed first) on its next request, so the map holds only scopes used lately.
_SPENT_IDLE_S = RESERVATION_TTL_S


def _minute_window() -> SlidingWindow:
    return SlidingWindow(WINDOW_BUCKETS, WINDOW_S / WINDOW_BUCKETS)


def _reservations() -> SlidingWindow:
    return SlidingWindow(RESERVATION_BUCKETS, RESERVATION_TTL_S / RESERVATION_BUCKETS)


@dataclass
class MemoryState:
    """The state of one process: fast, and not shared. Every window and every budget's
    reservations are a fixed ring of buckets (`buckets.py`): constant memory per scope
    whatever the traffic; a scope left idle for a whole window is forgotten."""
    cache: CacheStore
    clock: Callable[[], float] = time.time
    _windows: IdleMap[SlidingWindow] = field(
        default_factory=lambda: IdleMap(WINDOW_S, _minute_window))
    _reserved: IdleMap[SlidingWindow] = field(
        default_factory=lambda: IdleMap(RESERVATION_TTL_S, _reservations))
    # scope → (period start, spent in it): a new period replaces the old one.
    _spent: IdleMap[list[float]] = field(
        default_factory=lambda: IdleMap(_SPENT_IDLE_S, lambda: [math.nan, 0.0]))

    @classmethod
    def with_cache(cls, max_entries: int, max_bytes: int) -> MemoryState:
        return cls(cache=MemoryCache(max_entries, max_bytes))

    async def admit(self, home: str, checks: list[WindowCheck]) -> Admission:
        now = self.clock()
        touch = self._windows.touch
        windows = [touch(c.key, now) for c in checks]
        head = _advance_all(windows, now)
        # The longest wait, ties to the greatest key (as max over (wait, key) pairs).
        longest: tuple[float, str] | None = None
        for w, c in zip(windows, checks, strict=True):
            if w.total + c.amount <= c.limit:
                continue                  # fits now: wait() would say 0.0
            waited = (w.wait(c.amount, c.limit, now), c.key)
            if waited[0] > 0 and (longest is None or waited > longest):
                longest = waited
        if longest is not None:
            return Admission(longest[0], longest[1], None)
        for window, check in zip(windows, checks, strict=True):
            window.add(check.amount)
        return Admission(0.0, None, head)

    async def settle_windows(self, home: str, keys: list[str], bucket: int,
                             delta: float) -> None:
        for key in keys:
            window = self._windows.peek(key)
            if window is not None:
                window.adjust(bucket, delta)

    async def reserve(self, home: str, claims: list[BudgetClaim],
                      amount: float) -> BudgetReservation | BudgetRefusal:
        for claim in claims:  # awaits only here, before the atomic check-and-reserve below
            await self._load_spent(claim)
        now = self.clock()
        touch = self._reserved.touch
        rings = [touch(c.scope, now) for c in claims]
        head = _advance_all(rings, now)
        if head is None:
            head = self._bucket(now)
        for claim, ring in zip(claims, rings, strict=True):
            spent = self._spent.touch(claim.scope, now)[1]
            if spent + ring.total + amount > claim.budget_usd:
                return BudgetRefusal(claim, spent, max(0.0, ring.total))
        for ring in rings:
            ring.add(amount)
        return BudgetReservation(head, amount)

    def _bucket(self, now: float) -> int:
        return math.floor(now / (RESERVATION_TTL_S / RESERVATION_BUCKETS))

    async def _load_spent(self, claim: BudgetClaim) -> None:
        """First use of a scope in a period: its spend so far, from the durable ledger."""
        held = self._spent.touch(claim.scope, self.clock())
        if held[0] != claim.period_start:
            spent = await claim.load_spent()
            if held[0] != claim.period_start:  # another request may have loaded it meanwhile
                held[:] = [claim.period_start, spent]

    async def settle(self, home: str, claims: list[BudgetClaim],
                     reservation: BudgetReservation | None, cost: float) -> None:
        for claim in claims:
            ring = self._reserved.peek(claim.scope)
            if reservation is not None and ring is not None:
                ring.adjust(reservation.bucket, -reservation.amount)
            held = self._spent.peek(claim.scope)
            if held is not None and held[0] == claim.period_start:
                held[1] += cost

    async def standing(self, home: str, claim: BudgetClaim) -> tuple[float, float]:
        await self._load_spent(claim)
        now = self.clock()
        ring = self._reserved.touch(claim.scope, now)
        ring.advance(now)
        # Adding and releasing float amounts can leave a residue around 1e-18: never below 0.
        return self._spent.touch(claim.scope, now)[1], max(0.0, ring.total)

    async def breaker_updates(self, dep_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        return {}

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        return None

    def status(self) -> tuple[bool, str]:
        return True, "memory"

    async def close(self) -> None:
        return None


def _advance_all(windows: list[SlidingWindow], now: float) -> int | None:
    """Bring each window up to `now`; the newest bucket among them (None for no window)."""
    head: int | None = None
    for w in windows:
        at = w.advance(now)
        if head is None or at > head:
            head = at
    return head
