"""What follows a governed request, once it is accounted and the client has its answer: its
task's running totals (gateway/observability/task_tally.py) and, if it was drawn for one, its
shadow trial (gateway/followup/shadow.py). The accounting (gateway/http/governed.py) calls
`task_began` as it starts and `answered` as it ends; the app finishes idle tasks once a second.
"""

from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.trace import SpanContext

from gateway.followup.shadow import TrialInputs
from gateway.observability.task_tally import CallFacts
from gateway.pipeline.context import RequestContext
from gateway.runtime import Gateway, Runtime, feature_policy


def task_began(gw: Gateway, rt: Runtime, ctx: RequestContext) -> SpanContext | None:
    """A call of a task starts: the span of the task's first call, to link to."""
    if ctx.task is None:
        return None
    span = trace.get_current_span().get_span_context()
    first, evicted = gw.tasks.begin(ctx.task, span if span.is_valid else None,
                                    time.monotonic(), rt.config.tasks.max_open)
    if evicted:
        gw.metrics.task.evicted.inc(len(evicted))
        gw.metrics.task.finished(evicted)
    return first


def finish_idle_tasks(gw: Gateway) -> None:
    """Finish the tasks idle long enough (`tasks.idle_s`): into the per-task metrics."""
    finished = gw.tasks.expire(time.monotonic(), gw.runtime.config.tasks.idle_s)
    gw.metrics.task.finished(finished)
    gw.metrics.task.open.set(len(gw.tasks.tasks))


def answered(gw: Gateway, rt: Runtime, ctx: RequestContext) -> None:
    """The request's call added to its task; its shadow trial started, if it was drawn."""
    if ctx.task is not None:
        call = CallFacts(started_at=ctx.started_at, ended_at=time.time(),
                         status=ctx.outcome.status, held=ctx.hold is not None,
                         escalations=ctx.escalations, cost_usd=ctx.outcome.cost_usd)
        gw.tasks.end(ctx.task, call, time.monotonic())
        gw.metrics.task.call(ctx.task.workflow, call)
    if gw.shadow.wanted(ctx) is not None:
        policy = feature_policy(rt.config)
        record = rt.learned.record if ctx.scope is not None and policy.allows(ctx.scope) \
            else None
        gw.shadow.consider(ctx, TrialInputs(rt.catalog, rt.config.shadow, rt.config.routing,
                                            record))
