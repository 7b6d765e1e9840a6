"""Shadow trials: a candidate model answers a share of a rule's real requests, unseen.

A rule with `shadow: {group | deployment, share}` draws each request once (`ctx.draw`); for the
drawn share, once the client has been answered and the request accounted, the same request is
sent to the candidate in a background task, and the two answers are compared
(routing/shadow_compare.py) and stored (`ShadowStore`). Nothing of the trial reaches the client:
not the candidate's answer, not its latency, not its errors.

What bounds a trial:
- **permissions**: the candidate (and the judge) must pass the request's own permission scope:
  a deployment not cleared for the request's data class or region is never called, and the
  scope's `check` and `body_for` guard every attempt, as for the primary (a pseudonymized
  request is pseudonymized for the candidate too);
- **load**: at most `shadow.max_concurrent` trials in flight per process (more are skipped, not
  queued), `shadow.rpm` started per minute (in the shared state: across workers with Redis);
- **money**: its spend is ledgered under its own key, `shadow` (never a team's or a key's, so no
  team budget pays for it), and `shadow.budget_usd` caps it: the most a trial can cost is
  reserved first, as budgets do for requests;
- **time**: `shadow.timeout_s` for the candidate's call and the judge's; no retries.

Skipped trials are counted (`podium_shadow_trials_total{result="skipped_<why>"}`), never
stored. The trials are tasks the gateway owns: cancelled and awaited at shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.trace import Link, SpanContext, TraceFlags

from gateway.config import ShadowConfig
from gateway.errors import PodiumError, StateUnavailable
from gateway.followup.shadow_records import (
    SHADOW_KEY,
    Verdict,
    rule_of,
    shadow_pair,
    spend_row,
)
from gateway.observability.hops import RequestTrace
from gateway.observability.metrics import Metrics
from gateway.observability.telemetry import Telemetry
from gateway.pipeline.context import RequestContext
from gateway.storage.contracts import (
    BudgetClaim,
    BudgetRefusal,
    BudgetReservation,
    ShadowStore,
    SharedState,
    SpendStore,
    WindowCheck,
)
from plugins.budget import period_end, period_start
from routing.catalog import Catalog, Deployment
from routing.fallback import Caller, CallResult
from routing.learned.features import RecordedFeatures
from routing.providers.base import ChatAnswer
from routing.router import RoutePlan
from routing.rules import CascadeChecks, RetryConfig, RoutingConfig, ShadowJudge, ShadowTrial
from routing.shadow_compare import JUDGE_PASS, checked, compare, judge_body, judge_score

log = logging.getLogger("podium.shadow")
HOME = "shadow"             # where the trials' rate window and budget live in shared state
JUDGE_MAX_TOKENS = 64


@dataclass(frozen=True)
class TrialInputs:
    """What a trial needs of the config version that served its request."""
    catalog: Catalog
    limits: ShadowConfig
    routing: RoutingConfig
    # The prompt's features for training, where the audit policy allows them (else None).
    record: Callable[[Sequence[Mapping[str, Any]]], RecordedFeatures | None] | None = None


@dataclass(frozen=True)
class _Trial:
    ctx: RequestContext
    trial: ShadowTrial
    candidates: tuple[Deployment, ...]
    judges: tuple[Deployment, ...]
    inputs: TrialInputs
    features: RecordedFeatures | None


class ShadowTrials:
    def __init__(self, caller: Caller, state: SharedState, ledger: SpendStore,
                 store: ShadowStore | None, metrics: Metrics, telemetry: Telemetry) -> None:
        self._caller = caller
        self._state = state
        self._ledger = ledger
        self.store = store
        self._metrics = metrics
        self._telemetry = telemetry
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._report: tuple[float, list[dict[str, Any]]] | None = None

    @property
    def running(self) -> int:
        return len(self._tasks)

    @staticmethod
    def wanted(ctx: RequestContext) -> ShadowTrial | None:
        """The trial this request was drawn for (the same answer all along), else None. Any
        front door's request is a chat body by now (http/pipeline.py); embeddings are not
        trialled."""
        trial = ctx.plan.shadow if ctx.plan is not None else None
        if trial is None or ctx.endpoint == "embeddings" or ctx.draw >= trial.share:
            return None
        return trial

    def consider(self, ctx: RequestContext, inputs: TrialInputs) -> None:
        """Once the client has its answer: start the request's trial, if it was drawn for
        one and every bound allows it; never raises, never waits."""
        trial = self.wanted(ctx)
        if trial is None or self.store is None or ctx.plan is None:
            return
        rule, name = ctx.plan.rule, trial.group or trial.deployment or "?"
        outcome = ctx.outcome
        if outcome.answer is None or outcome.status != 200 or ctx.hold is not None \
                or (ctx.cache is not None and ctx.cache.hit) or outcome.deployment is None:
            return  # nothing fresh was answered: nothing to compare with
        candidates = _cleared(_targets(trial, inputs.catalog), ctx, outcome.deployment)
        if isinstance(candidates, str):
            self._metrics.shadowed(rule, name, f"skipped_{candidates}")
            return
        if self._closing or len(self._tasks) >= inputs.limits.max_concurrent:
            self._metrics.shadowed(rule, name, "skipped_busy")
            return
        judges = _cleared(_targets(trial.judge, inputs.catalog), ctx, None) \
            if trial.judge is not None else ()
        features = ctx.features or (inputs.record(ctx.body["messages"])
                                    if inputs.record is not None else None)
        run = _Trial(ctx, trial, candidates, judges if isinstance(judges, tuple) else (),
                     inputs, features)
        task = asyncio.create_task(self._run(run), name=f"podium-shadow-{ctx.request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def report(self, max_age_s: float = 5.0) -> list[dict[str, Any]]:
        """The store's report over every rule and trial (what `podium shadow report` prints),
        cached for a few seconds: the dashboard asks on every poll."""
        if self.store is None:
            return []
        now = time.monotonic()
        if self._report is None or now - self._report[0] > max_age_s:
            self._report = (now, await self.store.report(None, None))
        return self._report[1]

    async def close(self) -> None:
        """At shutdown: no new trials; the running ones are cancelled and awaited."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, run: _Trial) -> None:
        rule = rule_of(run.ctx)
        name = run.trial.group or run.trial.deployment or "?"
        links = _links(run.ctx)
        # The task inherited the request's trace record: its calls' events (a breaker's change)
        # are the trial's, so they go on the trial's own span.
        with (self._telemetry.tracer.start_as_current_span(
                  "podium.shadow", context=otel_context.Context(), links=links) as span,
              RequestTrace(span)):
            span.set_attribute("podium.shadow.rule", rule)
            span.set_attribute("podium.request_id", run.ctx.request_id)
            try:
                result = await self._admitted(run)
                if result is not None:
                    self._metrics.shadowed(rule, name, f"skipped_{result}")
            except Exception:  # a trial's failure is the trial's: logged, never the client's
                log.exception("shadow trial of request %s failed", run.ctx.request_id)

    async def _admitted(self, run: _Trial) -> str | None:
        """Run the trial if the rate and the budget allow; else why not."""
        limits = run.inputs.limits
        try:
            admission = await self._state.admit(HOME, [WindowCheck("shadow:rpm", limits.rpm, 1)])
        except StateUnavailable:
            return "state"
        if admission.wait_s > 0:
            return "rate"
        claims = _claims(limits, self._ledger)
        reserved = await self._reserve(claims, _most_cost(run))
        if reserved is None:
            return "budget"
        spent = 0.0
        try:
            spent = await self._compare(run)
        finally:
            await self._state.settle(HOME, claims, reserved, spent)
        return None

    async def _reserve(self, claims: list[BudgetClaim],
                       usd: float) -> BudgetReservation | None:
        if not claims:
            return BudgetReservation(0, 0.0)
        try:
            held = await self._state.reserve(HOME, claims, usd)
        except StateUnavailable:
            return None
        return None if isinstance(held, BudgetRefusal) else held

    async def _compare(self, run: _Trial) -> float:
        """Call the candidate (and the judge), store the comparison; what they cost."""
        ctx, trial = run.ctx, run.trial
        answered = await self._call(run, run.candidates, _shadow_body(ctx, run.inputs),
                                    "shadow")
        primary = ctx.outcome.answer or {}
        checks = ctx.plan.checks if ctx.plan is not None else CascadeChecks()
        verdict = Verdict(primary_check=checked(checks, ctx.body, primary))
        if isinstance(answered, CallResult):
            seen = compare(checks, ctx.body, primary, answered.answer.body)
            score, judge_cost = await self._judge(run, primary, answered.answer.body)
            agreed = score >= JUDGE_PASS if score is not None else \
                seen.similarity >= trial.agree_at
            verdict = Verdict(seen.primary_check, seen.candidate_check, seen.similarity,
                               score, judge_cost, agreed)
        pair = shadow_pair(ctx, run.inputs.catalog, run.candidates[0], answered, verdict,
                           run.features)
        if self.store is not None:
            self.store.submit(pair)
        result = "error" if pair.status == "error" else \
            "agreed" if pair.agreed else "disagreed"
        self._metrics.shadowed(pair.rule, pair.candidate, result)
        self._metrics.shadow_spend(pair.rule, pair.candidate_cost + pair.judge_cost)
        return pair.candidate_cost + pair.judge_cost

    async def _judge(self, run: _Trial, primary: dict[str, Any],
                     candidate: dict[str, Any]) -> tuple[float | None, float]:
        """The judge's score of the candidate's answer and what it cost; (None, 0) without
        a judge the request's scope allows."""
        judge: ShadowJudge | None = run.trial.judge
        if judge is None or not run.judges:
            return None, 0.0
        body = judge_body(judge.rubric, run.ctx.body.get("messages"), primary, candidate)
        graded = await self._call(run, run.judges, body, "judge")
        if not isinstance(graded, CallResult):
            return None, 0.0
        return judge_score(graded.answer.body), graded.cost_usd

    async def _call(self, run: _Trial, chain: tuple[Deployment, ...], body: dict[str, Any],
                    kind: str) -> CallResult[ChatAnswer] | PodiumError:
        """One call along `chain` under the request's scope, ledgered as shadow spend."""
        ctx, inputs = run.ctx, run.inputs
        plan = RoutePlan(rule=f"shadow:{rule_of(ctx)}",
                         strategy="cheapest", chain=chain, candidates=(), min_quality=0)
        deadline = asyncio.get_running_loop().time() + inputs.limits.timeout_s
        routing = inputs.routing.model_copy(update={"retries": RetryConfig(attempts=0)})
        try:
            result = await self._caller.chat(plan, body, deadline, routing, None, ctx.scope)
        except PodiumError as err:
            self._ledger.submit(spend_row(ctx, kind, chain[0], err.status, None))
            return err
        self._ledger.submit(spend_row(ctx, kind, result.deployment, 200, result))
        return result


def _targets(target: ShadowTrial | ShadowJudge | None,
             catalog: Catalog) -> tuple[Deployment, ...]:
    if target is None:
        return ()
    if target.group is not None:
        return catalog.groups.get(target.group, ())
    found = catalog.by_id.get(target.deployment or "")
    return (found,) if found is not None else ()


def _cleared(deployments: Sequence[Deployment], ctx: RequestContext,
             primary: str | None) -> tuple[Deployment, ...] | str:
    """The deployments that may receive this request (its permission scope, its needs),
    cheapest first; else why none may."""
    scope, route = ctx.permission, ctx.route
    kept, why = [], "no_candidate"
    for dep in deployments:
        if dep.id == primary:
            why = "primary"
        elif scope.refusal(dep) is not None:
            why = "not_cleared"
        elif route is not None and route.needs - dep.supports:
            why = "unsupported"
        else:
            kept.append(dep)
    if not kept:
        return why
    prompt = route.prompt_tokens if route is not None else 0
    return tuple(sorted(kept, key=lambda d: (d.cost(prompt, 1), d.id)))


def _shadow_body(ctx: RequestContext, inputs: TrialInputs) -> dict[str, Any]:
    """The request as the primary got it (a budget's output cap included), unstreamed, with an
    output cap of its own where the client set none: its reservation must be a bound."""
    body = {k: v for k, v in ctx.upstream_body().items() if k not in ("stream", "stream_options")}
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = inputs.routing.max_output_tokens
    return body


def _most_cost(run: _Trial) -> float:
    """The most the trial can cost: its dearest candidate at the output cap, and the judge."""
    route = run.ctx.route
    prompt = route.prompt_tokens if route is not None else 0
    body = _shadow_body(run.ctx, run.inputs)
    out = int(body.get("max_tokens") or body.get("max_completion_tokens") or 0)
    n = int(body.get("n") or 1)
    usd = max(d.cost(prompt, out * n) for d in run.candidates)
    if run.judges:
        judged = prompt + 2 * (out * n) + 400  # the question, both answers, the rubric
        usd += max(d.cost(judged, JUDGE_MAX_TOKENS) for d in run.judges)
    return usd


def _claims(limits: ShadowConfig, ledger: SpendStore) -> list[BudgetClaim]:
    if limits.budget_usd is None:
        return []
    now, period = time.time(), limits.budget_period
    start = period_start(period, now)

    async def spent() -> float:
        await ledger.flush()
        return await ledger.spent_since("key_id", SHADOW_KEY, start)

    return [BudgetClaim(scope=f"shadow:all:{period}", budget_usd=limits.budget_usd,
                        period_start=start, period_end=period_end(period, now),
                        load_spent=spent)]


def _links(ctx: RequestContext) -> list[Link]:
    """A link from the trial's own trace to the request's SERVER span (the trial is not part
    of the request: the request ended before it started)."""
    if not ctx.trace_id:
        return []
    parent = SpanContext(trace_id=int(ctx.trace_id, 16), span_id=int(ctx.span_id, 16),
                         is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return [Link(parent, {"podium.link": "shadowed request"})]

