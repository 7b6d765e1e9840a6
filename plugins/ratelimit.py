"""Requests and tokens per minute, per key and per team: sliding 60 s windows of one-second
buckets.

A request is counted in every limited scope (the key, its team) with its weight (1 for rpm;
the reserved tokens for tpm), in the current one-second bucket. It is admitted only if every
scope still has room; otherwise 429 `rate_limit_exceeded` with a Retry-After of the time until
enough buckets have left the window. When the request completes, its tpm count is corrected to
the real usage in the bucket it went into (`ctx.counted`). The windows live in the shared
state (`gateway/storage/`): per process, or in Redis for a fleet; either way check-and-count is
atomic, and a window costs the same memory at 1 request a minute as at 10,000 a second.
Which windows a caller is counted in is worked out once per key and config (`prepared.py`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from gateway.errors import RateLimited
from gateway.pipeline.identity import Principal
from gateway.storage.contracts import SharedState, WindowCheck
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.prepared import PerKey
from plugins.settings import Limits


def home_of(ctx: RequestContext) -> str:
    """Where one request's windows and budgets are stored together: its team, else its key
    (in Redis Cluster, one hash slot, so one script sees them all)."""
    p = ctx.principal
    return f"team:{p.team}" if p.team else f"key:{p.key_id}"


class Windows(NamedTuple):
    """A caller's windows: every check, a tpm one with amount 0 until a request fills it in."""
    home: str
    checks: tuple[WindowCheck, ...]
    tpm_at: tuple[int, ...]          # where in `checks` the tpm windows are
    tpm_keys: list[str]

    def for_tokens(self, tokens: float) -> list[WindowCheck]:
        checks = list(self.checks)
        for i in self.tpm_at:
            checks[i] = WindowCheck(checks[i].key, checks[i].limit, tokens)
        return checks


class RateLimitPlugin(BasePlugin):
    name = "rate_limit"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 state: SharedState) -> None:
        self._keys = keys
        self._teams = teams
        self._state = state
        self._windows: PerKey[Windows] = PerKey(self._prepare)

    def _prepare(self, p: Principal, own: Limits | None) -> Windows:
        checks: list[WindowCheck] = []
        for scope, limits in ((f"key:{p.key_id}", own),
                              (f"team:{p.team}", self._teams.get(p.team or ""))):
            if limits is None:
                continue
            if limits.rpm is not None:
                checks.append(WindowCheck(f"{scope}:rpm", limits.rpm, 1.0))
            if limits.tpm is not None:
                checks.append(WindowCheck(f"{scope}:tpm", limits.tpm, 0.0))
        tpm_at = tuple(i for i, c in enumerate(checks) if c.key.endswith(":tpm"))
        home = f"team:{p.team}" if p.team else f"key:{p.key_id}"  # as home_of
        return Windows(home, tuple(checks), tpm_at, [checks[i].key for i in tpm_at])

    def windows(self, p: Principal) -> Windows:
        """The windows `p`'s requests are counted in."""
        return self._windows.get(p, p.own_limits(self._keys))

    async def on_request(self, ctx: RequestContext) -> None:
        windows = self.windows(ctx.principal)
        if not windows.checks:
            return
        checks = windows.for_tokens(float(ctx.reserved.tokens))
        admission = await self._state.admit(windows.home, checks)
        if admission.wait_s > 0:
            scope, what = (admission.full or checks[0].key).rsplit(":", 1)
            noun = "requests" if what == "rpm" else "tokens"
            ctx.decide(self.name, "rejected", f"{scope} over its {noun} limit")
            raise RateLimited(f"Rate limit reached for {scope} ({noun} per minute); "
                              f"retry after {admission.wait_s:.0f}s.", admission.wait_s)
        if admission.bucket is not None:  # None: failing open, counted nowhere
            ctx.counted(admission.bucket)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        if ctx.window_bucket is None:
            return  # never counted (refused, or no limits)
        windows = self.windows(ctx.principal)
        used = outcome.usage.prompt_tokens + outcome.usage.completion_tokens
        if windows.tpm_keys and used != ctx.reserved.tokens:
            await self._state.settle_windows(windows.home, list(windows.tpm_keys),
                                             ctx.window_bucket, float(used - ctx.reserved.tokens))
