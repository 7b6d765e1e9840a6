"""Budgets and the spend ledger.

Before a call, the request's maximum cost is reserved against every budget that applies (its
key's, its team's); after it, the reservation is released and the real cost (every attempt,
cascade escalations included) is added. A request is refused (429 `budget_exceeded`) when
spent + reserved + its own maximum would pass the budget, so concurrent requests can never
together spend more than the budget by more than one request's underestimate. Check-and-reserve
is atomic in the shared state (one process, or Redis for a fleet). Spend is durable in the
ledger (`gateway/storage/`: SQLite or PostgreSQL) and re-read per period.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache, partial

from gateway.errors import BudgetExceeded
from gateway.storage.contracts import BudgetClaim, SharedState, SpendStore
from gateway.storage.records import SpendRow
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import BudgetPeriod, Limits

# A reservation lapses if never settled (a worker died mid-request); longer than any request.
RESERVE_TTL_S = 3600.0
def period_start(period: BudgetPeriod, now: float) -> float:
    """The start of the UTC day or month `now` falls in (unix seconds); 0 for "total"."""
    if period == "total":
        return 0.0
    day = now - now % 86400.0  # unix time has no leap seconds: every UTC day is 86,400 s
    return day if period == "day" else _month_start(int(day))


@lru_cache(maxsize=64)
def _month_start(day: int) -> float:
    return datetime.fromtimestamp(day, UTC).replace(day=1).timestamp()


class BudgetPlugin(BasePlugin):
    name = "budget"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 state: SharedState, ledger: SpendStore) -> None:
        self._keys = keys
        self._teams = teams
        self._state = state
        self._ledger = ledger

    def _claims(self, ctx: RequestContext) -> list[BudgetClaim]:
        p, now, claims = ctx.principal, time.time(), []
        scopes = (("key", "key_id", p.key_id, p.own_limits(self._keys)),
                  ("team", "team", p.team, self._teams.get(p.team or "")))
        for scope, column, value, limits in scopes:
            if limits is None or limits.budget_usd is None or value is None:
                continue
            start = period_start(limits.budget_period, now)
            claims.append(BudgetClaim(
                scope=f"{scope}:{value}:{limits.budget_period}", budget_usd=limits.budget_usd,
                period_start=start, load_spent=partial(self._ledger.spent_since, column, value,
                                                       start)))
        return claims

    async def on_request(self, ctx: RequestContext) -> None:
        claims = self._claims(ctx)
        if not claims:
            return
        full = await self._state.reserve(claims, ctx.request_id, ctx.reserved.usd, RESERVE_TTL_S)
        if full is not None:
            claim, spent, reserved = full
            kind, name, period = claim.scope.split(":", 2)
            ctx.decide(self.name, "rejected", f"{kind}:{name} budget")
            raise BudgetExceeded(
                f"Budget exhausted for {kind} {name!r}: ${spent:.6f} spent and "
                f"${reserved:.6f} reserved of ${claim.budget_usd:.6f} per {period}.")

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        claims = self._claims(ctx)
        if claims:
            await self._state.settle(claims, ctx.request_id, outcome.cost_usd)
        p = ctx.principal
        self._ledger.submit(SpendRow(
            ts=ctx.started_at, request_id=ctx.request_id, key_id=p.key_id, key_name=p.name,
            team=p.team, model=ctx.model, deployment=outcome.deployment, status=outcome.status,
            prompt_tokens=outcome.usage.prompt_tokens,
            completion_tokens=outcome.usage.completion_tokens, cost_usd=outcome.cost_usd))
