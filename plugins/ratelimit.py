"""Requests and tokens per minute, per key and per team: sliding 60 s windows.

A request records one entry per limited scope (the key, its team) holding its weight (1 for
rpm; the reserved tokens for tpm). It is admitted only if every scope still has room;
otherwise 429 `rate_limit_exceeded` with a Retry-After of the time until enough of the window
has passed. Token entries are settled to the real usage when the request completes. The
windows live in the shared state (gateway/storage/): per process, or in Redis for a fleet;
either way check-and-record is atomic.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.errors import RateLimited
from gateway.storage.contracts import SharedState, WindowCheck
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import Limits


class RateLimitPlugin(BasePlugin):
    name = "rate_limit"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 state: SharedState) -> None:
        self._keys = keys
        self._teams = teams
        self._state = state

    def _checks(self, ctx: RequestContext) -> list[WindowCheck]:
        p, checks = ctx.principal, []
        for scope, limits in ((f"key:{p.key_id}", p.own_limits(self._keys)),
                              (f"team:{p.team}", self._teams.get(p.team or ""))):
            if limits is None:
                continue
            if limits.rpm is not None:
                checks.append(WindowCheck(f"{scope}:rpm", limits.rpm, 1.0))
            if limits.tpm is not None:
                checks.append(WindowCheck(f"{scope}:tpm", limits.tpm, float(ctx.reserved.tokens)))
        return checks

    async def on_request(self, ctx: RequestContext) -> None:
        checks = self._checks(ctx)
        if not checks:
            return
        wait, full = await self._state.admit(checks, ctx.request_id)
        if wait > 0:
            scope, what = (full or checks[0].key).rsplit(":", 1)
            noun = "requests" if what == "rpm" else "tokens"
            ctx.decide(self.name, "rejected", f"{scope} over its {noun} limit")
            raise RateLimited(f"Rate limit reached for {scope} ({noun} per minute); "
                              f"retry after {wait:.0f}s.", wait)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        tpm = [c.key for c in self._checks(ctx) if c.key.endswith(":tpm")]
        if tpm:
            used = outcome.usage.prompt_tokens + outcome.usage.completion_tokens
            await self._state.settle_windows(tpm, ctx.request_id, float(used))
