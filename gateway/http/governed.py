"""What every model endpoint does around its hops: learn who is calling (hop 2, identity), and
account for the request exactly once at the end, whatever happened.

    identify → ... the endpoint's hops ... → plugins' on_complete → metrics, access-log fields
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from opentelemetry.trace import SpanContext

from gateway.errors import PodiumError
from gateway.followup.requests import answered, task_began
from gateway.observability import hops
from gateway.pipeline.context import RequestContext
from gateway.pipeline.egress import CLIENT_CLOSED, client_left
from gateway.pipeline.identity import Principal, identity_attributes, presented_token
from gateway.pipeline.tasks import task_tag
from gateway.runtime import ACCESS, ACCOUNTED, GATEWAY, REQUEST_ID, Gateway, Runtime


async def identify(request: web.Request, gw: Gateway, rt: Runtime, *,
                   api_key_header: bool = False) -> Principal:
    """The caller, from a bearer key or JWT (or, where `api_key_header`, from `x-api-key`)."""
    with gw.telemetry.span("podium.identity") as span:
        token = presented_token(request.headers, api_key_header=api_key_header)
        principal = await rt.auth.authenticate_token(token)
        request[ACCESS].update(key_id=principal.key_id, team=principal.team)
        identity_attributes(span, principal)
        return principal


def new_context(request: web.Request, rt: Runtime, endpoint: str, principal: Principal,
                model: str, body: dict[str, object], stream: bool) -> RequestContext:
    """The request's context, once the caller is known and the body valid; it names the
    config version that serves it (the span and the access log say so too) and the task it
    belongs to (a bad task id is refused here, 400)."""
    version_attributes(request, rt)
    task = task_tag(request.headers, body, principal, rt.workflows, request[REQUEST_ID])
    return RequestContext(request_id=request[REQUEST_ID], endpoint=endpoint,
                          principal=principal, model=model, body=body, stream=stream,
                          timeout_s=rt.config.server.request_timeout_s, config=rt.version,
                          task=task)


def version_attributes(request: web.Request, rt: Runtime) -> None:
    """The version of `rt` on the request's SERVER span and access-log line (the middleware
    names the version in force when the request arrived; the handler's may be newer)."""
    request[ACCESS]["config_version"] = rt.version.number
    record = hops.current()
    if record is not None:
        record.set_attributes({"podium.config.version": rt.version.number,
                               "podium.config.digest": rt.version.short})


@asynccontextmanager
async def accounted(request: web.Request, rt: Runtime,
                    ctx: RequestContext) -> AsyncIterator[None]:
    """Around a governed request: the outcome learns how it failed, and the plugins'
    accounting (spend, limits, audit) and the metrics run exactly once, whatever happened."""
    task_attributes(ctx, task_began(request.app[GATEWAY], rt, ctx))
    try:
        yield
    except PodiumError as err:
        ctx.outcome.failed(err)
        raise
    except ConnectionResetError as exc:
        if client_left(request, exc):  # answered (and paid for), but never delivered
            ctx.outcome.status = CLIENT_CLOSED
        raise
    finally:
        await rt.chain.on_complete(ctx, ctx.outcome)
        journal = request.app[GATEWAY].governance.journal
        if journal is not None:
            journal.accounted(ctx.request_id)  # its records are with the stores now
        _observe(request, ctx)
        answered(request.app[GATEWAY], rt, ctx)


def task_attributes(ctx: RequestContext, first: SpanContext | None) -> None:
    """The task on the request's SERVER span, linked to its first call's span when that one
    is in another trace (a task's calls without a shared `traceparent`)."""
    record = hops.current()
    if ctx.task is None or record is None:
        return
    record.set_attributes({"podium.task.id": ctx.task.task,
                           "podium.workflow": ctx.task.workflow})
    span = record.span
    if first is not None and first.trace_id != span.get_span_context().trace_id:
        span.add_link(first, {"podium.link": "task", "podium.task.id": ctx.task.task})


def journal_answer(gw: Gateway, ctx: RequestContext) -> None:
    """Right before an answer leaves: a compact record of it that outlives a `kill -9`
    (gateway/storage/journal.py), until the request's own records are written."""
    journal = gw.governance.journal
    if journal is None:
        return
    p, outcome = ctx.principal, ctx.outcome
    deployment = outcome.deployment or (ctx.cache.deployment if ctx.cache else None)
    journal.answered({
        "time": ctx.started_at, "request_id": ctx.request_id, "key_id": p.key_id,
        "key_name": p.name, "team": p.team, "status": 200, "endpoint": ctx.endpoint,
        "model": ctx.model, "deployment": deployment, "trace_id": ctx.trace_id,
        "prompt_tokens": outcome.usage.prompt_tokens,
        "completion_tokens": outcome.usage.completion_tokens,
        "cost_usd": round(outcome.cost_usd, 10)})


def _observe(request: web.Request, ctx: RequestContext) -> None:
    """Metrics and the access log's fields for a finished request (after the plugins)."""
    outcome = ctx.outcome
    request[ACCOUNTED] = True
    request[ACCESS].update(
        key_id=ctx.principal.key_id, team=ctx.principal.team, model=ctx.model,
        route=ctx.plan.rule if ctx.plan else None, deployment=outcome.deployment,
        attempts=len(outcome.attempted), cost_usd=round(outcome.cost_usd, 10),
        cache=ctx.cache.state if ctx.cache is not None else None,
        error_code=outcome.error_code)
    request.app[GATEWAY].metrics.answered(ctx)
