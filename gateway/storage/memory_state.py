"""Shared state: what workers and machines must agree on — rate-limit windows, budget
reservations and spend, the response cache, circuit-breaker state.

`MemoryState` (the default) keeps it in the process; `RedisState` (`state.backend: redis`,
gateway/redis_state.py) keeps it in Redis, updated atomically by Lua scripts, so N workers on M
machines enforce one limit and one budget. Both implement `SharedState`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gateway.errors import PodiumError
from gateway.pipeline.cache import CacheStore, MemoryCache

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

WINDOW_S = 60.0


class StateUnavailable(PodiumError):
    """The shared state backend is down and the config says to fail closed."""
    status, type, code = 503, "api_error", "state_unavailable"


@dataclass(frozen=True, slots=True)
class WindowCheck:
    key: str                 # e.g. "key:key_ab12:rpm"
    limit: float
    amount: float            # 1 for requests, reserved tokens for tokens


@dataclass(frozen=True, slots=True)
class BudgetClaim:
    scope: str               # e.g. "team:support"
    budget_usd: float
    period_start: float      # unix seconds
    load_spent: Callable[[], Awaitable[float]]  # durable spend since period_start


class SharedState(Protocol):
    @property
    def cache(self) -> CacheStore:
        """The response cache that lives where this state does."""
        ...

    async def admit(self, checks: list[WindowCheck],
                    request_id: str) -> tuple[float, str | None]:
        """Record the request in every window if all have room: (0.0, None); otherwise
        nothing is recorded and the result is the seconds until it would fit and the key of
        the window that is full."""
        ...

    async def settle_windows(self, keys: list[str], request_id: str, amount: float) -> None:
        """Replace this request's reserved amount in these windows with what it used."""
        ...

    async def reserve(self, claims: list[BudgetClaim], request_id: str, amount: float,
                      ttl_s: float) -> tuple[BudgetClaim, float, float] | None:
        """Reserve `amount` under every claim if all have room (None); otherwise reserve
        nothing and return the claim that is full, with its spent and reserved totals.
        A reservation not settled within `ttl_s` (a crashed worker) lapses."""
        ...

    async def settle(self, claims: list[BudgetClaim], request_id: str, cost: float) -> None:
        """Release this request's reservations and add its real cost to spent."""
        ...

    async def breaker_updates(self) -> dict[str, tuple[str, float]]:
        """Breaker states published by other processes: deployment id → (state, open until
        as unix seconds)."""
        ...

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        """Tell other processes a breaker changed."""
        ...

    def status(self) -> tuple[bool, str]:
        """(healthy, description) for /readyz."""
        ...

    async def close(self) -> None:
        ...


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


def open_state(cfg: GatewayConfig) -> SharedState:
    """The shared state the config names: this process's memory, or Redis."""
    if cfg.state.backend == "redis":
        from gateway.storage.redis_state import RedisState

        return RedisState.from_config(cfg)
    return MemoryState.with_cache(cfg.cache.max_entries, cfg.cache.max_bytes)
