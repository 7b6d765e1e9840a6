"""Hop 9, egress: JSON or SSE back to the client, with Podium's `x-podium-*` headers.

The headers of a model call are built in one place, `podium_headers`, from what the hops put
on the request's context; `x-request-id` is added to every response by the HTTP middleware.

A client may hang up before its answer is written: `podium serve` lets the handler finish (the
answer is paid for, so it is accounted for), and its write then fails with a connection reset.
That is the client's doing, not a fault: `client_left` tells it apart, and the request is
recorded with status 499 (nginx's "client closed request") and one DEBUG log event.
"""

from __future__ import annotations

import base64
import sys
from array import array
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson
from aiohttp import web

from gateway.errors import PodiumError
from gateway.pipeline.context import RequestContext
from routing.router import RoutePlan

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no"}


# The answer already written to the client, on a request that `send_json` answered early.
SENT: web.RequestKey[web.StreamResponse] = web.RequestKey("podium.sent", web.StreamResponse)
KIND_HEADER = "x-podium-cache-kind"
CONFIG_VERSION_HEADER = "x-podium-config-version"
SIMILARITY_HEADER = "x-podium-cache-similarity"
CLIENT_CLOSED = 499


def podium_headers(ctx: RequestContext) -> dict[str, str]:
    """What the client learns about how its request was served: the config version, the
    rule that routed it, the
    deployment that produced the answer (on a cache hit too), the attempts made, the cache's
    part, and the cost, once it is known (a stream's is known only at its end: it is on the
    trace and in the audit record)."""
    outcome, cache = ctx.outcome, ctx.cache
    headers: dict[str, str] = {CONFIG_VERSION_HEADER: str(ctx.config.number)}
    if ctx.plan is not None:
        headers["x-podium-route"] = route_header(ctx.plan)
    if cache is not None:
        headers["x-podium-cache"] = cache.state
        if cache.kind is not None:
            headers[KIND_HEADER] = cache.kind
        if cache.similarity is not None:
            headers[SIMILARITY_HEADER] = f"{cache.similarity:.4f}"
    deployment = cache.deployment if cache is not None and cache.hit else outcome.deployment
    if deployment is not None:
        headers["x-podium-deployment"] = deployment
    headers["x-podium-attempts"] = str(len(outcome.attempted))
    if outcome.settled:
        headers["x-podium-cost-usd"] = f"{outcome.cost_usd:.10f}"
    if ctx.escalations:
        headers["x-podium-escalations"] = str(ctx.escalations)
    return headers


def route_header(plan: RoutePlan) -> str:
    """`x-podium-route`: the rule that decided; for a learned rule also its decision, the
    score and threshold behind it and the quality it required, as `; name=value` parameters:
    `support; decision=escalate; score=0.4123; threshold=0.2871; quality=90`."""
    learned = plan.learned
    if learned is None:
        return plan.rule
    parts = [plan.rule, f"decision={learned.decision}"]
    if learned.score is not None and learned.threshold is not None:
        parts += [f"score={learned.score:.4f}", f"threshold={learned.threshold:.4f}"]
    parts.append(f"quality={learned.min_quality}")
    if learned.header_override is not None:
        parts.append(f"header-min-quality={learned.header_override}")
    return "; ".join(parts)


def client_left(request: web.Request, exc: BaseException) -> bool:
    """Whether `exc` is the client having hung up: a reset met while writing to a connection
    that is closing or closed. A reset from anywhere else (an upstream, a store) is not."""
    transport = request.transport
    return isinstance(exc, ConnectionResetError) and (transport is None
                                                      or transport.is_closing())


def json_response(body: Any, headers: Mapping[str, str] | None = None,
                  status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, headers=headers,
                        content_type="application/json")


async def send_json(request: web.Request, body: Any, headers: Mapping[str, str],
                    status: int = 200) -> web.Response:
    """Write the answer now, so that the client has it before the request's accounting
    (spend settlement, audit record, metrics, access log) runs; the handler then returns it
    as it is. From here on nothing may answer this request again (see http/middleware.py)."""
    response = json_response(body, headers, status)
    await response.prepare(request)
    await response.write_eof()
    request[SENT] = response
    return response


async def sse_response(request: web.Request, headers: Mapping[str, str],
                       chunks: AsyncIterator[dict[str, Any]],
                       *, include_usage: bool) -> web.StreamResponse:
    """Relay chunks as server-sent events, ending with `data: [DONE]`.

    Podium always asks the upstream for usage (spend is settled from it); the usage chunk and the
    per-chunk `usage: null` fields are passed on only when the client asked for them.
    """
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    await resp.prepare(request)
    try:
        async for chunk in chunks:
            if not include_usage:
                if not chunk.get("choices") and chunk.get("usage"):
                    continue
                chunk.pop("usage", None)
            elif "usage" not in chunk:
                chunk["usage"] = None
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")
    except PodiumError as err:
        # Headers are gone already; the OpenAI SDKs raise an APIError on an `error` event.
        await resp.write(b"data: " + orjson.dumps(err.body()) + b"\n\n")
    else:
        await resp.write(b"data: [DONE]\n\n")
    finally:
        # When the client left mid-stream, close the chunks now, not when they are collected:
        # the stream then bills what the upstream produced before the request is accounted.
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    await resp.write_eof()
    return resp


async def open_event_stream(request: web.Request,
                            headers: Mapping[str, str]) -> web.StreamResponse:
    """A prepared `text/event-stream` answer, for a front door that writes its own events.
    Marked as sent: a failure after this point can only end the stream, never answer again."""
    resp = web.StreamResponse(headers={**_SSE_HEADERS, **headers})
    await resp.prepare(request)
    request[SENT] = resp
    return resp


async def completion_chunks(body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    """A complete `chat.completion` as the chunks a stream of it would have carried."""
    base: dict[str, Any] = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")
                            if k in body}
    base["object"] = "chat.completion.chunk"
    for choice in body.get("choices") or ():
        index, message = choice.get("index", 0), choice.get("message") or {}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if message.get("content"):
            deltas.append({"content": message["content"]})
        if message.get("tool_calls"):
            deltas.append({"tool_calls": [{**call, "index": i}
                                          for i, call in enumerate(message["tool_calls"])]})
        for delta in deltas:
            yield {**base, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                        "finish_reason": None}]}
        yield {**base, "choices": [{"index": index, "delta": {}, "logprobs": None,
                                    "finish_reason": choice.get("finish_reason") or "stop"}]}
    if body.get("usage"):
        yield {**base, "choices": [], "usage": body["usage"]}


def to_base64(vector: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32, as the SDKs decode it."""
    packed = array("f", vector)
    if sys.byteorder != "little":
        packed.byteswap()
    return base64.b64encode(packed.tobytes()).decode("ascii")


def model_list(ids: list[str], created: int) -> dict[str, Any]:
    return {"object": "list", "data": [
        {"id": i, "object": "model", "created": created, "owned_by": "podium"} for i in ids]}
