"""`POST /v1/chat/completions`: every hop in order, with the governance chain around the call.

    ingress → identity → permissions → route → plugins (request) → cache → call
    → plugins (response) → egress, and the plugins' on_complete exactly once at the end.

The hops live in `gateway/pipeline/` and fill in the request's context in turn; this module
only sequences them. A `Runtime` is read once at the start, so the whole request sees one
config.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import PodiumError
from gateway.http.governed import accounted, identify, journal_answer, new_context
from gateway.observability.metrics import Metrics
from gateway.pipeline.cache import CacheLookup, assemble
from gateway.pipeline.context import RequestContext
from gateway.pipeline.egress import completion_chunks, podium_headers, send_json, sse_response
from gateway.pipeline.ingress import ChatCompletionRequest, Parsed, read_json, validate_call
from gateway.pipeline.route import RouteDecision, chat_reservation
from gateway.pipeline.unmask import unmask_completion, unmask_stream
from gateway.runtime import GATEWAY, Gateway, Runtime
from plugins.chain import PluginChain
from routing.attempts import OpenStream
from routing.cascade import AnswerCheck


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    parsed = validate_call(ChatCompletionRequest,
                           await read_json(request, rt.config.server.max_body_bytes))
    ctx = new_context(request, rt, "chat", principal, parsed.typed.model, parsed.body,
                      bool(parsed.typed.stream))
    async with accounted(request, rt, ctx):
        response = await _serve(request, gw, rt, ctx, parsed)
        ctx.outcome.status = response.status
        return response


async def _serve(request: web.Request, gw: Gateway, rt: Runtime, ctx: RequestContext,
                 parsed: Parsed[ChatCompletionRequest]) -> web.StreamResponse:
    await gw.sync_breakers()
    planner = gw.planner(rt)
    ctx.permitted(await planner.permit_chat(ctx.principal, parsed, request.headers))
    decision = await planner.route_chat(ctx.principal, parsed, request.headers,
                                        ctx.permission)
    ctx.routed(decision.request, decision.plan, chat_reservation(
        decision, parsed.typed, rt.config.routing.expected_output_tokens), decision.features)
    ctx.held(await rt.chain.on_request(ctx))
    lookup = await gw.cache.look_up(ctx, request.headers, rt.config, rt.router)
    ctx.looked_up(lookup.result())
    if lookup.hit is not None:
        ctx.decide("cache", "hit", lookup.result().kind or "")
        ctx.outcome.settled = True  # nothing more to pay than a semantic lookup's embedding
        return await _deliver(request, rt, ctx, lookup.hit.answer)
    # Whole answers are needed to check a cascade or to hold one for review: those buffer.
    if ctx.stream and decision.plan.strategy != "cascade" and ctx.hold is None:
        return await _stream(request, gw, rt, ctx, decision, lookup)
    answer = await _call(gw, rt, ctx, decision)
    response = await _deliver(request, rt, ctx, answer)
    await lookup.keep(answer, ctx.outcome.deployment)
    return response


async def _call(gw: Gateway, rt: Runtime, ctx: RequestContext,
                decision: RouteDecision) -> dict[str, Any]:
    """Hop 7 for a whole answer: the plan walked, checked for a cascade, un-masked."""
    plan, scope = decision.plan, decision.scope
    check = AnswerCheck(plan.checks, ctx.body) if plan.strategy == "cascade" else None
    body = _unstreamed(ctx.upstream_body()) if ctx.stream else ctx.upstream_body()
    result = await gw.caller.chat(plan, body, ctx.deadline(), rt.config.routing, check, scope)
    ctx.outcome.called(result)
    for escalation in result.escalations:
        ctx.decide("cascade", "escalated", escalation)
    answer = result.answer.body
    if result.masked and scope.pseudonymizer is not None:
        answer = unmask_completion(answer, scope.pseudonymizer)
    return answer


async def _deliver(request: web.Request, rt: Runtime, ctx: RequestContext,
                   answer: dict[str, Any]) -> web.StreamResponse:
    """A whole answer through the response-side plugins, then out as JSON, or as the chunks
    a stream of it would have carried."""
    ctx.outcome.answer = answer
    await rt.chain.on_response(ctx, ctx.outcome)
    headers = podium_headers(ctx)
    journal_answer(request, ctx)
    if ctx.stream:
        relay = _Relay(rt.chain, ctx)
        return await sse_response(request, headers, relay(completion_chunks(answer)),
                                  include_usage=_wants_usage(ctx.body))
    return await send_json(request, answer, headers)


async def _stream(request: web.Request, gw: Gateway, rt: Runtime, ctx: RequestContext,
                  decision: RouteDecision, lookup: CacheLookup) -> web.StreamResponse:
    """Hop 7 for a live stream: the first deployment that starts one answers."""
    scope = decision.scope
    stream = await gw.caller.open_stream(decision.plan, ctx.upstream_body(), ctx.deadline(),
                                         rt.config.routing, scope)
    ctx.outcome.opened(stream)
    headers = podium_headers(ctx)
    chunks = stream.chunks()
    if stream.masked and scope.pseudonymizer is not None:
        chunks = unmask_stream(chunks, scope.pseudonymizer)
    relay = _Relay(rt.chain, ctx, stream, gw.metrics, [] if lookup.policy.write else None,
                   lambda: journal_answer(request, ctx))
    response = await sse_response(request, headers, relay(chunks),
                                  include_usage=_wants_usage(ctx.body))
    if relay.seen is not None and ctx.outcome.error_code is None:
        await lookup.keep(assemble(relay.seen), stream.deployment.id)  # once it is complete
    return response


@dataclass
class _Relay:
    """Chunks on their way to the client, through the plugins' chunk hook; the outcome learns
    how the stream ended. For a live stream also: the time to its first chunk, a copy of each
    chunk for the cache (`seen`), and its usage and cost once it is over."""
    chain: PluginChain
    ctx: RequestContext
    stream: OpenStream | None = None
    metrics: Metrics | None = None
    seen: list[dict[str, Any]] | None = None
    done: Callable[[], None] | None = None   # once a live stream ended well, before [DONE]

    async def __call__(self, chunks: AsyncIterator[dict[str, Any]],
                       ) -> AsyncIterator[dict[str, Any]]:
        first = self.stream is not None
        try:
            async for chunk in chunks:
                if first:
                    self._first_chunk()
                    first = False
                self.chain.on_chunk(self.ctx, chunk)
                if self.seen is not None:
                    self.seen.append(orjson.loads(orjson.dumps(chunk)))  # egress edits chunks
                yield chunk
        except PodiumError as err:
            self.ctx.outcome.failed(err)
            raise
        finally:
            if self.stream is not None:
                # Ended, broken off, or left by the client mid-stream (then closed here, and
                # billed for what it produced): the outcome learns its usage and cost.
                await self.stream.abandon()
                self.ctx.outcome.streamed(self.stream)
        if self.stream is not None and self.done is not None:
            self.done()

    def _first_chunk(self) -> None:
        if self.metrics is not None and self.stream is not None:
            self.metrics.ttft.labels(self.stream.deployment.id).observe(
                time.monotonic() - self.ctx.started_mono)


def _wants_usage(body: Mapping[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))


def _unstreamed(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
