"""Shared state kept in this process (`state.backend: memory`, the default): exact, fast, and
not shared with other workers or machines. See `contracts.SharedState` for what it promises.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cachetools import TLRUCache

from gateway.storage.contracts import WINDOW_S, BudgetClaim, CacheStore, WindowCheck


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


@dataclass(slots=True)
class _Entry:
    at: float
    amount: float
    request_id: str


@dataclass
class _Window:
    """One sliding window: its entries oldest first, their running total, and each request's
    entry, so admitting and settling cost O(1) however busy the window is."""
    entries: deque[_Entry] = field(default_factory=deque)
    total: float = 0.0
    by_request: dict[str, _Entry] = field(default_factory=dict)

    def prune(self, horizon: float) -> None:
        while self.entries and self.entries[0].at <= horizon:
            gone = self.entries.popleft()
            self.total -= gone.amount
            self.by_request.pop(gone.request_id, None)

    def add(self, entry: _Entry) -> None:
        self.entries.append(entry)
        self.total += entry.amount
        self.by_request[entry.request_id] = entry


@dataclass
class MemoryState:
    """The state of one process: exact, fast, and not shared."""
    cache: CacheStore
    clock: Callable[[], float] = time.time
    _windows: dict[str, _Window] = field(default_factory=dict)
    _spent: dict[tuple[str, float], float] = field(default_factory=dict)
    _reserved: dict[str, dict[str, float]] = field(default_factory=dict)

    @classmethod
    def with_cache(cls, max_entries: int, max_bytes: int) -> MemoryState:
        return cls(cache=MemoryCache(max_entries, max_bytes))

    async def admit(self, checks: list[WindowCheck],
                    request_id: str) -> tuple[float, str | None]:
        wait, full = max(((self._wait(c), c.key) for c in checks), default=(0.0, None))
        if wait > 0:
            return wait, full
        now = self.clock()
        for c in checks:
            self._window(c.key).add(_Entry(now, c.amount, request_id))
        return 0.0, None

    def _wait(self, check: WindowCheck) -> float:
        window, now = self._window(check.key), self.clock()
        used = window.total
        if used + check.amount <= check.limit:
            return 0.0
        freed = 0.0
        for e in window.entries:  # only when refusing: oldest first, until enough has left
            freed += e.amount
            if used - freed + check.amount <= check.limit:
                return max(0.001, e.at + WINDOW_S - now)
        return WINDOW_S

    def _window(self, key: str) -> _Window:
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window()
        window.prune(self.clock() - WINDOW_S)
        return window

    async def settle_windows(self, keys: list[str], request_id: str, amount: float) -> None:
        for key in keys:
            window = self._windows.get(key)
            entry = window.by_request.get(request_id) if window is not None else None
            if window is not None and entry is not None:
                window.total += amount - entry.amount
                entry.amount = amount

    async def reserve(self, claims: list[BudgetClaim], request_id: str, amount: float,
                      ttl_s: float) -> tuple[BudgetClaim, float, float] | None:
        for claim in claims:  # awaits only here, before the atomic check-and-reserve below
            key = (claim.scope, claim.period_start)
            if key not in self._spent:
                spent = await claim.load_spent()
                self._spent.setdefault(key, spent)
        for claim in claims:
            spent = self._spent[(claim.scope, claim.period_start)]
            reserved = sum(self._reserved.get(claim.scope, {}).values())
            if spent + reserved + amount > claim.budget_usd:
                return claim, spent, reserved
        for claim in claims:
            self._reserved.setdefault(claim.scope, {})[request_id] = amount
        return None

    async def settle(self, claims: list[BudgetClaim], request_id: str, cost: float) -> None:
        for claim in claims:
            self._reserved.get(claim.scope, {}).pop(request_id, None)
            key = (claim.scope, claim.period_start)
            if key in self._spent:
                self._spent[key] += cost

    async def breaker_updates(self) -> dict[str, tuple[str, float]]:
        return {}

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        return None

    def status(self) -> tuple[bool, str]:
        return True, "memory"

    async def close(self) -> None:
        return None
