"""`POST /v1/chat/completions`: every hop in order, with the governance chain around the call.

    ingress → identity → permissions → route → plugins (request) → call → plugins (response)
    → egress, and plugins' on_complete exactly once at the end, whatever happened.

Once the caller is known and the body valid, a `RequestContext` follows the request; an
`Outcome` collects what happened, so the audit record and spend settlement see failures too.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import orjson
from aiohttp import web
from opentelemetry import trace

from gateway.app import ACCESS, ACCOUNTED, GATEWAY, REQUEST_ID, Gateway, Runtime
from gateway.errors import AllAttemptsFailed, PodiumError
from gateway.http.models import call_headers, deadline_for, identify, permit, route
from gateway.pipeline.cache import CachePolicy, assemble, cache_key
from gateway.pipeline.cache import policy as cache_policy
from gateway.pipeline.egress import completion_chunks, send_json, sse_response
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest, Parsed, read_json, validate_call
from gateway.pipeline.permissions import PermissionScope
from gateway.pipeline.route import chat_route_request
from gateway.pipeline.semantic_cache import KIND_HEADER, SemanticProbe, probe
from gateway.pipeline.unmask import unmask_completion, unmask_stream
from gateway.storage.contracts import CacheStore
from plugins.base import Outcome, RequestContext
from routing.cascade import AnswerCheck
from routing.fallback import CallResult, OpenStream
from routing.providers.base import ChatAnswer
from routing.router import RoutePlan, RouteRequest


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(gw, rt, request)
    parsed = validate_call(ChatCompletionRequest,
                      await read_json(request, rt.config.server.max_body_bytes))
    ctx = _context(request, principal, parsed)
    outcome = Outcome(status=500)
    async with accounted(request, gw, rt, ctx, outcome, "chat"):
        response = await _serve(request, gw, rt, parsed, ctx, outcome)
        outcome.status = response.status
        return response


@asynccontextmanager
async def accounted(request: web.Request, gw: Gateway, rt: Runtime, ctx: RequestContext,
                    outcome: Outcome, endpoint: str) -> AsyncIterator[None]:
    """Around a governed request: the outcome learns how it failed, and the plugins'
    accounting (spend, limits, audit) and the metrics run exactly once, whatever happened."""
    try:
        yield
    except PodiumError as err:
        outcome.status, outcome.error_code = err.status, err.code
        if isinstance(err, AllAttemptsFailed):
            outcome.attempted = [a.deployment_id for a in err.attempts]
        raise
    finally:
        await rt.chain.on_complete(ctx, outcome)
        observe(gw, ctx, outcome, endpoint, request)


def observe(gw: Gateway, ctx: RequestContext, outcome: Outcome, endpoint: str,
            request: web.Request) -> None:
    """Metrics and the access log's fields for a finished request (after the plugins)."""
    request[ACCOUNTED] = True
    request[ACCESS].update(
        key_id=ctx.principal.key_id, team=ctx.principal.team, model=ctx.model,
        route=ctx.plan.rule if ctx.plan else None, deployment=outcome.deployment,
        attempts=len(outcome.attempted), cost_usd=round(outcome.cost_usd, 10),
        cache=outcome.cache, error_code=outcome.error_code)
    gw.metrics.answered(
        endpoint=endpoint, route=ctx.plan.rule if ctx.plan else "none",
        deployment=outcome.deployment, team=ctx.principal.team, status=outcome.status,
        cache=outcome.cache, error_code=outcome.error_code, usage=outcome.usage,
        cost_usd=outcome.cost_usd, total_s=time.monotonic() - ctx.started_mono,
        upstream_s=outcome.upstream_s)
    escalated = sum(1 for d in ctx.decisions if d["decision"] == "escalated")
    if escalated and ctx.plan is not None:
        gw.metrics.escalations.labels(ctx.plan.rule).inc(escalated)


def _context(request: web.Request, principal: Principal,
             parsed: Parsed[ChatCompletionRequest]) -> RequestContext:
    return RequestContext(
        request_id=request[REQUEST_ID], principal=principal, model=parsed.typed.model,
        body=parsed.body, stream=bool(parsed.typed.stream),
        facts=None, **trace_ids())


class TraceIds(TypedDict):
    trace_id: str
    span_id: str


def trace_ids() -> TraceIds:
    """The current (SERVER) span's ids, for the audit record; empty when not tracing."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return {"trace_id": "", "span_id": ""}
    return {"trace_id": format(span_context.trace_id, "032x"),
            "span_id": format(span_context.span_id, "016x")}


async def _serve(request: web.Request, gw: Gateway, rt: Runtime,
                 parsed: Parsed[ChatCompletionRequest], ctx: RequestContext,
                 outcome: Outcome) -> web.StreamResponse:
    chat = parsed.typed
    scope = permit(gw, rt, ctx.principal, parsed, request)
    ctx.data_class, ctx.pii_counts = scope.data_class, scope.findings
    route_req = chat_route_request(chat, parsed.body, ctx.principal, request.headers,
                                   rt.router.tokens, scope)
    ctx.facts = route_req.facts
    plan = await route(gw, rt, route_req, ctx.principal)
    _reserve(ctx, rt, plan, route_req, chat)
    await rt.chain.on_request(ctx)
    lookup = await _cache_lookup(request, gw, rt, plan, parsed, scope, ctx, outcome)
    if lookup.hit is not None:
        return await _respond(request, rt, ctx, outcome, lookup.hit, lookup.headers(request, plan))
    # Whole answers are needed to check a cascade or to hold one for review: those buffer.
    if chat.stream and plan.strategy != "cascade" and ctx.hold is None:
        return await _stream(request, gw, rt, plan, parsed, scope, ctx, outcome, lookup)
    check = AnswerCheck(plan.checks, parsed.body) if plan.strategy == "cascade" else None
    body = _unstreamed(parsed.body) if chat.stream else parsed.body
    result = await gw.caller.chat(plan, body, deadline_for(rt), rt.config.routing, check, scope)
    answer = result.answer.body
    if result.masked and scope.pseudonymizer is not None:
        answer = unmask_completion(answer, scope.pseudonymizer)
    _record(ctx, outcome, result)
    headers = {**call_headers(request, plan, result), **lookup.headers(request, plan),
               "x-podium-cost-usd": f"{outcome.cost_usd:.10f}"}  # with a semantic lookup's
    response = await _respond(request, rt, ctx, outcome, answer, headers)
    await lookup.store(answer)
    return response


async def _respond(request: web.Request, rt: Runtime, ctx: RequestContext, outcome: Outcome,
                   answer: dict[str, Any], headers: dict[str, str]) -> web.StreamResponse:
    outcome.answer = answer
    await rt.chain.on_response(ctx, outcome)
    if ctx.stream:
        return await sse_response(request, headers, _checked(rt, ctx, completion_chunks(answer),
                                                             outcome),
                                  include_usage=bool((ctx.body.get("stream_options") or {})
                                                     .get("include_usage")))
    return await send_json(request, answer, headers)


async def _cache_lookup(request: web.Request, gw: Gateway, rt: Runtime, plan: RoutePlan,
                        parsed: Parsed[ChatCompletionRequest], scope: PermissionScope,
                        ctx: RequestContext, outcome: Outcome) -> CacheLookup:
    cfg = rt.config.cache
    with gw.telemetry.span("podium.cache") as span:
        pol = cache_policy(request.headers, parsed.body, enabled=cfg.enabled,
                           default_ttl_s=plan.cache_ttl_s if plan.cache_ttl_s is not None
                           else cfg.ttl_s, nondeterministic_ok=plan.cache_any_temperature,
                           held=ctx.hold is not None)
        lookup = CacheLookup(gw.state.cache, pol, "")
        # Every candidate the caller may use, not the chain: breakers and cool-downs
        # reorder the chain, and must not change the key.
        candidates = tuple(c.deployment.id for c in plan.candidates)
        if pol.read or pol.write:
            lookup.key = cache_key(parsed.body, candidates,
                                   ctx.principal.team or ctx.principal.key_id,
                                   scope.data_class, scope.regions)
        if pol.read:
            raw = await gw.state.cache.get(lookup.key)
            lookup.hit = orjson.loads(raw) if raw is not None else None
        if pol.read and lookup.hit is None and cfg.semantic.enabled:  # costs an embedding call
            lookup.semantic = await probe(gw, rt, ctx.principal, scope,
                                          parsed.body, candidates, gw.state.cache)
            if lookup.semantic is not None:
                outcome.cost_usd += lookup.semantic.cost_usd
                lookup.hit = lookup.semantic.hit
        outcome.cache = lookup.state
        span.set_attribute("podium.cache", lookup.state)
        if lookup.hit is not None:
            ctx.decide("cache", "hit", lookup.kind)
        return lookup


@dataclass
class CacheLookup:
    store_to: CacheStore
    policy: CachePolicy
    key: str
    hit: dict[str, Any] | None = None
    semantic: SemanticProbe | None = None

    @property
    def kind(self) -> str:
        semantic = self.semantic is not None and self.semantic.hit is not None
        return "semantic" if semantic else "exact"

    @property
    def state(self) -> str:
        if self.hit is not None:
            return "hit"
        return "miss" if self.policy.read or self.policy.write else "bypass"

    def headers(self, request: web.Request, plan: RoutePlan) -> dict[str, str]:
        out = {"x-podium-cache": self.state}
        if self.hit is not None:
            out.update(call_headers(request, plan, None))
            cost = self.semantic.cost_usd if self.semantic is not None else 0.0
            out.update({"x-podium-cache": "hit", "x-podium-attempts": "0",
                        "x-podium-cost-usd": f"{cost:.10f}", KIND_HEADER: self.kind})
            out.update(self.semantic.headers() if self.semantic is not None else {})
        return out

    async def store(self, answer: dict[str, Any] | None) -> None:
        if self.policy.write and answer is not None and self.hit is None:
            await self.store_to.set(self.key, orjson.dumps(answer), self.policy.ttl_s)
            if self.semantic is not None:
                self.semantic.remember(self.key, self.policy.ttl_s)


async def _stream(request: web.Request, gw: Gateway, rt: Runtime, plan: RoutePlan,
                  parsed: Parsed[ChatCompletionRequest], scope: PermissionScope,
                  ctx: RequestContext, outcome: Outcome, lookup: CacheLookup,
                  ) -> web.StreamResponse:
    stream = await gw.caller.open_stream(plan, parsed.body, deadline_for(rt),
                                         rt.config.routing, scope)
    outcome.deployment, outcome.attempted = stream.deployment.id, stream.attempted
    # The cost is known only at the end, after the headers: it is on the span and in the audit.
    headers = {**call_headers(request, plan, None), **lookup.headers(request, plan)}
    headers["x-podium-deployment"] = stream.deployment.id
    headers["x-podium-attempts"] = str(stream.attempts)
    chunks = stream.chunks()
    if stream.masked and scope.pseudonymizer is not None:
        chunks = unmask_stream(chunks, scope.pseudonymizer)
    seen: list[dict[str, Any]] | None = [] if lookup.policy.write else None
    ttft = gw.metrics.ttft.labels(stream.deployment.id)
    response = await sse_response(
        request, headers, _checked(rt, ctx, chunks, outcome, stream, seen,
                                   lambda: ttft.observe(time.monotonic() - ctx.started_mono)),
        include_usage=parsed.typed.wants_usage_in_stream)
    if seen is not None and outcome.error_code is None:
        await lookup.store(assemble(seen))  # a streamed answer is stored once it is complete
    return response


async def _checked(rt: Runtime, ctx: RequestContext, chunks: AsyncIterator[dict[str, Any]],
                   outcome: Outcome, stream: OpenStream | None = None,
                   seen: list[dict[str, Any]] | None = None,
                   first: Callable[[], None] | None = None) -> AsyncIterator[dict[str, Any]]:
    """Chunks through the plugins' chunk hook; the outcome learns how the stream ended."""
    try:
        async for chunk in chunks:
            if first is not None:
                first()
                first = None
            rt.chain.on_chunk(ctx, chunk)
            if seen is not None:
                seen.append(orjson.loads(orjson.dumps(chunk)))  # egress edits chunks in place
            yield chunk
    except PodiumError as err:
        outcome.status, outcome.error_code = err.status, err.code
        raise
    finally:
        if stream is not None:
            outcome.usage = stream.usage
            outcome.cost_usd += stream.cost_usd  # after a semantic lookup's, if any
            outcome.upstream_s = stream.upstream_s


def _reserve(ctx: RequestContext, rt: Runtime, plan: RoutePlan, req: RouteRequest,
             chat: ChatCompletionRequest) -> None:
    """What limits and budgets hold back before the call: the most it can use and cost."""
    n = chat.n or 1
    max_out = chat.max_completion_tokens or chat.max_tokens
    expected = rt.config.routing.expected_output_tokens
    costs = [d.cost(req.prompt_tokens, (max_out or d.max_output_tokens or expected) * n)
             for d in plan.chain]
    ctx.plan, ctx.prompt_tokens = plan, req.prompt_tokens
    ctx.reserve_tokens = req.prompt_tokens + (max_out or expected) * n
    # A cascade may pay for every deployment in its chain; otherwise only one answers.
    ctx.reserve_usd = sum(costs) if plan.strategy == "cascade" else max(costs)


def _record(ctx: RequestContext, outcome: Outcome, result: CallResult[ChatAnswer]) -> None:
    outcome.deployment, outcome.attempted = result.deployment.id, result.attempted
    outcome.usage = result.usage
    outcome.cost_usd += result.cost_usd  # after a semantic lookup's, if any
    outcome.upstream_s = result.upstream_s
    for escalation in result.escalations:
        ctx.decide("cascade", "escalated", escalation)


def _unstreamed(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
