"""Budgets and the spend ledger.

Before a call, the request's maximum cost is reserved against every budget that applies (its
key's, its team's); after it, the reservation is released and the real cost (every attempt,
cascade escalations included) is added. A request is refused (429 `budget_exceeded`) when
spent + reserved + its own maximum would pass the budget, so concurrent requests can never
together spend more than the budget by more than one request's underestimate. Check-and-reserve
is atomic in the shared state (one process, or Redis for a fleet), which counts reservations in
minute buckets: the request keeps what it holds (`ctx.earmark`) and settling releases
exactly that. Spend is durable in the ledger (`gateway/storage/`: SQLite or PostgreSQL), which
seeds each period's counter (and reconciles it after a Redis outage). Which budgets a caller
is claimed against is worked out once per key, config and budget period (`prepared.py`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import lru_cache, partial
from typing import Any, NamedTuple

from gateway.errors import BudgetExceeded, StateUnavailable
from gateway.pipeline.identity import Principal
from gateway.pipeline.route import most_cost
from gateway.storage.contracts import BudgetClaim, BudgetRefusal, SharedState, SpendStore
from gateway.storage.records import SpendRow
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.prepared import PerKey
from plugins.ratelimit import home_of
from plugins.settings import BudgetPeriod, Limits


def period_start(period: BudgetPeriod, now: float) -> float:
    """The start of the UTC day or month `now` falls in (unix seconds); 0 for "total"."""
    if period == "total":
        return 0.0
    day = now - now % 86400.0  # unix time has no leap seconds: every UTC day is 86,400 s
    return day if period == "day" else _month_start(int(day))


def period_end(period: BudgetPeriod, now: float) -> float:
    """When the period `now` falls in ends (the next one starts); inf for "total"."""
    if period == "total":
        return math.inf
    day = now - now % 86400.0
    return day + 86400.0 if period == "day" else _next_month_start(int(day))


@lru_cache(maxsize=64)
def _month_start(day: int) -> float:
    return datetime.fromtimestamp(day, UTC).replace(day=1).timestamp()


@lru_cache(maxsize=64)
def _next_month_start(day: int) -> float:
    first = datetime.fromtimestamp(day, UTC).replace(day=1)
    return first.replace(year=first.year + first.month // 12,
                         month=first.month % 12 + 1).timestamp()


class Claims(NamedTuple):
    """A caller's budget claims, good from `start` until `end` (the first period to end)."""
    claims: tuple[BudgetClaim, ...]
    start: float
    end: float

    def current(self) -> bool:
        return self.start <= time.time() < self.end


class BudgetPlugin(BasePlugin):
    name = "budget"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 state: SharedState, ledger: SpendStore, max_output_tokens: int) -> None:
        self._keys = keys
        self._teams = teams
        self._state = state
        self._ledger = ledger
        self._max_output = max_output_tokens
        self._prepared: PerKey[Claims] = PerKey(self._prepare)

    def claim(self, kind: str, name: str, limits: Limits | None,
              now: float) -> BudgetClaim | None:
        """The budget of key `name` (its id) or team `name` in the period `now` falls in."""
        if limits is None or limits.budget_usd is None:
            return None
        column = "key_id" if kind == "key" else "team"
        start = period_start(limits.budget_period, now)
        return BudgetClaim(
            scope=f"{kind}:{name}:{limits.budget_period}", budget_usd=limits.budget_usd,
            period_start=start, period_end=period_end(limits.budget_period, now),
            load_spent=partial(self._spent_since, column, name, start))

    async def standing(self, kind: str, name: str, home: str,
                       limits: Limits | None) -> dict[str, Any] | None:
        """One key's or team's budget now, as enforcement sees it (for the spend API); None
        when it has no budget. `home` is where its counters live (see `home_of`)."""
        now = time.time()
        claim = self.claim(kind, name, limits, now)
        if claim is None or limits is None:
            return None
        spent, reserved = await self._state.standing(home, claim)
        return {"budget_usd": claim.budget_usd, "period": limits.budget_period,
                "period_start": int(claim.period_start),
                "resets_at": None if math.isinf(claim.period_end) else int(claim.period_end),
                "spent_usd": round(spent, 10), "reserved_usd": round(reserved, 10),
                "remaining_usd": round(max(0.0, claim.budget_usd - spent - reserved), 10)}

    async def _spent_since(self, column: str, value: str, since: float) -> float:
        # Rows this process has queued count too: a counter is seeded (or reconciled after a
        # Redis outage) from the ledger, and must not miss the answers just given.
        await self._ledger.flush()
        return await self._ledger.spent_since(column, value, since)

    def _prepare(self, p: Principal, own: Limits | None) -> Claims:
        now = time.time()
        claims = [self.claim("key", p.key_id, own, now)]
        if p.team is not None:
            claims.append(self.claim("team", p.team, self._teams.get(p.team), now))
        kept = tuple(c for c in claims if c is not None)
        return Claims(kept, max((c.period_start for c in kept), default=-math.inf),
                      min((c.period_end for c in kept), default=math.inf))

    def _claims(self, ctx: RequestContext) -> list[BudgetClaim]:
        p = ctx.principal
        return list(self._prepared.get(p, p.own_limits(self._keys), Claims.current).claims)

    async def on_request(self, ctx: RequestContext) -> None:
        claims = self._claims(ctx)
        if not claims:
            return
        usd = ctx.reserved.usd
        if ctx.endpoint != "embeddings" and _open_ended(ctx.body):  # every chat front door
            usd = await self._cap_output(ctx, claims)
        held = await self._state.reserve(home_of(ctx), claims, usd)
        if isinstance(held, BudgetRefusal):
            kind, name, _ = held.claim.scope.split(":", 2)
            ctx.decide(self.name, "rejected", f"{kind}:{name} budget")
            who = f"{ctx.principal.name!r} ({name})" if kind == "key" else repr(name)
            raise BudgetExceeded(refusal_message(held, f"{kind} {who}", usd))
        ctx.earmarked(held)

    async def _cap_output(self, ctx: RequestContext, claims: list[BudgetClaim]) -> float:
        """Bound a request that set no `max_tokens`: without a bound its reservation would be a
        guess (40 long answers once spent 5x a budget). The cap is `routing.max_output_tokens`,
        or less: what the budget left can pay at the dearest deployment. Returns the cost to
        reserve at that cap, a true upper bound."""
        plan, route = ctx.plan, ctx.route
        if plan is None or route is None:
            raise RuntimeError("the budget hook needs the route hop's plan")
        asked = ctx.body.get("n")
        n: int = asked if isinstance(asked, int) and asked > 0 else 1
        prompt_usd = most_cost(plan, route.prompt_tokens, lambda d: 0)
        per_token = most_cost(plan, 0, lambda d: n)
        cap, left = self._max_output, math.inf
        try:
            left = min([c.budget_usd - sum(await self._state.standing(home_of(ctx), c))
                        for c in claims])
        except StateUnavailable:
            pass  # the cap alone bounds it; reserving decides what an outage means

        if per_token > 0 and left < math.inf:
            # A hair under what is left: summing the prompt's and the output's cost again in
            # reserve() must not round past the budget and refuse the request it was sized for.
            cap = max(1, min(cap, math.floor((left - prompt_usd) / per_token * (1 - 1e-9))))
        ctx.capped(cap)
        return most_cost(plan, route.prompt_tokens, lambda d: cap * n)

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        claims = self._claims(ctx)
        if claims:
            await self._state.settle(home_of(ctx), claims, ctx.earmark, outcome.cost_usd)
        p, task = ctx.principal, ctx.task
        self._ledger.submit(SpendRow(
            ts=ctx.started_at, request_id=ctx.request_id, key_id=p.key_id, key_name=p.name,
            team=p.team, model=ctx.model, deployment=outcome.deployment, status=outcome.status,
            prompt_tokens=outcome.usage.prompt_tokens,
            completion_tokens=outcome.usage.completion_tokens, cost_usd=outcome.cost_usd,
            task=" ".join(task.key) if task is not None else None,
            workflow=task.workflow if task is not None else None,
            escalations=ctx.escalations, held=int(ctx.hold is not None),
            duration_s=round(time.monotonic() - ctx.started_mono, 6)))


def _open_ended(body: Mapping[str, Any]) -> bool:
    return body.get("max_tokens") is None and body.get("max_completion_tokens") is None


def refusal_message(refusal: BudgetRefusal, whose: str, this_request: float) -> str:
    """Names all three parts of the sum that passed the budget: a budget with nothing spent
    can still be full of other requests' reservations, or too small for this one's maximum."""
    period = refusal.claim.scope.rsplit(":", 1)[1]
    return (f"Budget exhausted for {whose}: ${refusal.spent:.6f} spent + "
            f"${refusal.reserved:.6f} reserved by requests in flight + ${this_request:.6f} "
            f"reserved for this request (its maximum cost) would pass the budget of "
            f"${refusal.claim.budget_usd:.6f} per {period}.")
