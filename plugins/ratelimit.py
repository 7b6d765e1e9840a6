"""Requests and tokens per minute, per key and per team: sliding-window logs.

A request records one entry per limited scope (the key, its team) holding its weight (1 for
rpm; the reserved tokens for tpm) and its time. It is admitted only if every scope still has
room in the last 60 s; otherwise 429 `rate_limit_exceeded` with a Retry-After of the time until
enough of the window has passed. Token entries are settled to the real usage when the request
completes. The check-and-record has no await inside, so it is atomic on the event loop.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from gateway.errors import RateLimited
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import Limits

WINDOW_S = 60.0


@dataclass
class Entry:
    at: float
    amount: float


class SlidingWindows:
    """In-memory windows, one per (scope, kind); the state of one process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._logs: dict[str, deque[Entry]] = {}

    def room_after(self, key: str, limit: float, amount: float) -> float:
        """0 if `amount` fits now under `limit`, else seconds until it would."""
        log, now = self._log(key), self._clock()
        used = sum(e.amount for e in log)
        if used + amount <= limit:
            return 0.0
        freed = 0.0
        for e in log:  # oldest first: when enough has left the window, it fits
            freed += e.amount
            if used - freed + amount <= limit:
                return max(0.001, e.at + WINDOW_S - now)
        return WINDOW_S

    def record(self, key: str, amount: float) -> Entry:
        entry = Entry(self._clock(), amount)
        self._log(key).append(entry)
        return entry

    def _log(self, key: str) -> deque[Entry]:
        log = self._logs.setdefault(key, deque())
        horizon = self._clock() - WINDOW_S
        while log and log[0].at <= horizon:
            log.popleft()
        return log


class RateLimitPlugin(BasePlugin):
    name = "rate_limit"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 windows: SlidingWindows) -> None:
        self._keys = keys
        self._teams = teams
        self._windows = windows
        self._held: dict[str, list[Entry]] = {}

    def _scopes(self, ctx: RequestContext) -> list[tuple[str, Limits]]:
        scopes = []
        if (limits := self._keys.get(ctx.principal.key_id)) is not None:
            scopes.append((f"key:{ctx.principal.key_id}", limits))
        if (limits := self._teams.get(ctx.principal.team or "")) is not None:
            scopes.append((f"team:{ctx.principal.team}", limits))
        return scopes

    async def on_request(self, ctx: RequestContext) -> None:
        checks = []
        for scope, limits in self._scopes(ctx):
            if limits.rpm is not None:
                checks.append((f"{scope}:rpm", limits.rpm, 1.0, "requests"))
            if limits.tpm is not None:
                checks.append((f"{scope}:tpm", limits.tpm, float(ctx.reserve_tokens), "tokens"))
        waits = [(self._windows.room_after(k, lim, amt), k, what) for k, lim, amt, what in checks]
        blocked = [w for w in waits if w[0] > 0]
        if blocked:
            wait, key, what = max(blocked)
            ctx.decide(self.name, "rejected", f"{key.rsplit(':', 1)[0]} over its {what} limit")
            raise RateLimited(f"Rate limit reached for {key.rsplit(':', 1)[0]} ({what} per "
                              f"minute); retry after {wait:.0f}s.", wait)
        entries = [self._windows.record(k, amt) for k, _, amt, _ in checks]
        self._held[ctx.request_id] = [e for e, c in zip(entries, checks, strict=True)
                                      if c[0].endswith(":tpm")]

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        used = outcome.usage.prompt_tokens + outcome.usage.completion_tokens
        for entry in self._held.pop(ctx.request_id, ()):
            entry.amount = used  # settle the reservation to what was really used
