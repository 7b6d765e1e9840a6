"""The chat pipeline, once, for every front door: a chat body in, a whole `chat.completion` or
a stream of `chat.completion.chunk`s out.

    permissions → route → plugins (request) → cache → call → plugins (response)

Chat Completions, the Responses API and the Anthropic Messages API all run this function on
a chat body (their own request translated, see gateway/translate/) and render what it hands
back in their own shape; identity, ingress and the accounting around it (`governed.py`) are
theirs too. So every API is scoped, routed, cached, governed and traced by the same code.

`Served` is what comes back: for a request that asked for a stream, `chunks` (relayed through
the plugins' chunk hook as they are read); otherwise `answer`. Either way `headers` holds the
`x-podium-*` headers as they stand when the answer is ready, and `done()` must be awaited once
the client has it: it stores a fresh answer in the cache (a stream only once it is complete).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from gateway.errors import PodiumError
from gateway.http.governed import journal_answer
from gateway.observability.metrics import Metrics
from gateway.pipeline.cache import CacheLookup, assemble
from gateway.pipeline.context import RequestContext
from gateway.pipeline.egress import completion_chunks, podium_headers
from gateway.pipeline.ingress import ChatCompletionRequest, Parsed
from gateway.pipeline.route import RouteDecision, chat_reservation
from gateway.pipeline.unmask import unmask_completion, unmask_stream
from gateway.runtime import Gateway, Runtime
from plugins.chain import PluginChain
from routing.attempts import OpenStream, aclose
from routing.cascade import AnswerCheck
from routing.providers.base import Wire


async def _nothing() -> None:
    return None


@dataclass
class Served:
    """The pipeline's answer to one request, for its front door to render."""
    headers: dict[str, str]
    answer: dict[str, Any] | None = None            # a whole chat.completion (not streamed)
    chunks: AsyncIterator[dict[str, Any]] | None = None   # the chunks (streamed)
    native: dict[str, Any] | None = None            # the upstream's answer in the client's API
    keep: Callable[[], Awaitable[None]] = field(default=_nothing)

    def stream(self) -> AsyncIterator[dict[str, Any]]:
        """The chunks of a streamed request's answer."""
        if self.chunks is None:
            raise RuntimeError("this answer is not a stream")
        return self.chunks

    async def close(self) -> None:
        """Close the chunks now, when the client left mid-stream (not when they are
        collected), so the stream bills what the upstream produced before the request is
        accounted. A no-op for a stream read to its end."""
        if self.chunks is not None:
            await aclose(self.chunks)

    async def done(self) -> None:
        """After the client has the answer: store it in the cache, where the policy allows."""
        await self.keep()


async def run_chat(gw: Gateway, rt: Runtime, ctx: RequestContext,
                   parsed: Parsed[ChatCompletionRequest], headers: Mapping[str, str],
                   wire: Wire | None = None) -> Served:
    """Every hop after identity and ingress for one chat body (`ctx.body`). `wire` is the
    request in the client's own API, sent as is to a deployment that speaks it."""
    await gw.sync_breakers()
    planner = gw.planner(rt)
    ctx.permitted(await planner.permit_chat(ctx.principal, parsed, headers))
    decision = await planner.route_chat(ctx.principal, parsed, headers, ctx.permission)
    ctx.routed(decision.request, decision.plan, chat_reservation(
        decision, parsed.typed, rt.config.routing.expected_output_tokens), decision.features)
    ctx.held(await rt.chain.on_request(ctx))
    lookup = await gw.cache.look_up(ctx, headers, rt.config, rt.router)
    ctx.looked_up(lookup.result())
    if lookup.hit is not None:
        ctx.decide("cache", "hit", lookup.result().kind or "")
        ctx.outcome.settled = True  # nothing more to pay than a semantic lookup's embedding
        return await _whole(gw, rt, ctx, lookup.hit.answer)
    # Whole answers are needed to check a cascade or to hold one for review: those buffer.
    if ctx.stream and decision.plan.strategy != "cascade" and ctx.hold is None:
        return await _stream(gw, rt, ctx, decision, lookup, wire)
    answer, native = await _call(gw, rt, ctx, decision, wire)
    served = await _whole(gw, rt, ctx, answer, native)
    served.keep = lambda: lookup.keep(answer, ctx.outcome.deployment)
    return served


async def _call(gw: Gateway, rt: Runtime, ctx: RequestContext, decision: RouteDecision,
                wire: Wire | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Hop 7 for a whole answer: the plan walked, checked for a cascade, un-masked."""
    plan, scope = decision.plan, decision.scope
    check = AnswerCheck(plan.checks, ctx.body) if plan.strategy == "cascade" else None
    body = _unstreamed(ctx.upstream_body()) if ctx.stream else ctx.upstream_body()
    if wire is not None and ctx.stream:
        wire = Wire(wire.api, _unstreamed(wire.body))
    result = await gw.caller.chat(plan, body, ctx.deadline(), rt.config.routing, check, scope,
                                  _capped(wire, ctx))
    ctx.outcome.called(result)
    for escalation in result.escalations:
        ctx.decide("cascade", "escalated", escalation)
    answer = result.answer.body
    if result.masked and scope.pseudonymizer is not None:
        answer = unmask_completion(answer, scope.pseudonymizer)
    return answer, result.answer.native


async def _whole(gw: Gateway, rt: Runtime, ctx: RequestContext, answer: dict[str, Any],
                 native: dict[str, Any] | None = None) -> Served:
    """A whole answer through the response-side plugins; for a streamed request, as the
    chunks a stream of it would have carried."""
    ctx.outcome.answer = answer
    await rt.chain.on_response(ctx, ctx.outcome)
    headers = podium_headers(ctx)
    journal_answer(gw, ctx)
    if ctx.stream:
        return Served(headers, chunks=_Relay(rt.chain, ctx)(completion_chunks(answer)))
    return Served(headers, answer=answer, native=native)


async def _stream(gw: Gateway, rt: Runtime, ctx: RequestContext, decision: RouteDecision,
                  lookup: CacheLookup, wire: Wire | None) -> Served:
    """Hop 7 for a live stream: the first deployment that starts one answers."""
    scope = decision.scope
    stream = await gw.caller.open_stream(decision.plan, ctx.upstream_body(), ctx.deadline(),
                                         rt.config.routing, scope, _capped(wire, ctx))
    ctx.outcome.opened(stream)
    chunks = stream.chunks()
    if stream.masked and scope.pseudonymizer is not None:
        chunks = unmask_stream(chunks, scope.pseudonymizer)
    # The chunks are kept for the cache, and whole for a shadow trial to compare with.
    shadowed = gw.shadow.wanted(ctx) is not None
    relay = _Relay(rt.chain, ctx, stream, gw.metrics,
                   [] if lookup.policy.write or shadowed else None,
                   lambda: journal_answer(gw, ctx))

    async def keep() -> None:
        if relay.seen is not None and ctx.outcome.error_code is None:
            whole = assemble(relay.seen)
            await lookup.keep(whole, stream.deployment.id)  # once complete
            if shadowed:
                ctx.outcome.answer = whole
    return Served(podium_headers(ctx), chunks=relay(chunks), keep=keep)


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
    done: Callable[[], None] | None = None   # once a live stream ended well, before its end

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


def _capped(wire: Wire | None, ctx: RequestContext) -> Wire | None:
    """The client's own request with the output cap a budget set (`ctx.upstream_body`), in
    the Responses API's name for it."""
    if wire is None or ctx.output_cap is None:
        return wire
    return Wire(wire.api, {**wire.body, "max_output_tokens": ctx.output_cap})


def _unstreamed(body: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
