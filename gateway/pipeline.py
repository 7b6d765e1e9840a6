"""The request, hop by hop: the HTTP handlers that run ingress → identity → route → call → egress.

Each hop is a function with a typed input and output and its own span; the handlers only
sequence them. A `Runtime` is read once at the start, so the whole request sees one config.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.app import GATEWAY, REQUEST_ID, Gateway, Runtime
from gateway.call import CallResult
from gateway.egress import json_response, model_list, sse_response, to_base64
from gateway.identity import Principal
from gateway.ingress import ChatCompletionRequest, EmbeddingRequest, read_json, validate
from gateway.provider import ChatAnswer, EmbeddingAnswer
from routing.router import AUTO, RoutePlan, RouteRequest
from routing.tokens import count_messages, count_text


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)


def identify(gw: Gateway, rt: Runtime, request: web.Request) -> Principal:
    with gw.telemetry.tracer.start_as_current_span("podium.identity") as span:
        principal = rt.keys.authenticate(request.headers.get("Authorization"))
        if span.is_recording():
            span.set_attributes({"podium.key.id": principal.key_id,
                                 "podium.key.name": principal.name,
                                 "podium.team": principal.team or ""})
        return principal


def route(gw: Gateway, rt: Runtime, req: RouteRequest, principal: Principal) -> RoutePlan:
    with gw.telemetry.tracer.start_as_current_span("podium.route") as span:
        plan = rt.router.plan(req, principal)
        if span.is_recording():
            span.set_attributes({
                "podium.route.rule": plan.rule, "podium.route.requested_model": req.model,
                "podium.route.min_quality": plan.min_quality,
                "podium.route.chain": [d.id for d in plan.chain],
                "podium.route.prompt_tokens": req.prompt_tokens})
            for c in plan.candidates:
                span.add_event("candidate", {"deployment": c.deployment.id, "kept": c.kept,
                                             "reason": c.reason})
        return plan


def call_headers(request: web.Request, plan: RoutePlan, result: CallResult[Any] | None,
                 cost: float | None) -> dict[str, str]:
    headers = {"x-request-id": request[REQUEST_ID], "x-podium-route": plan.rule}
    if result is not None:
        headers["x-podium-deployment"] = result.deployment.id
        headers["x-podium-attempts"] = str(result.attempts)
    if cost is not None:
        headers["x-podium-cost-usd"] = f"{cost:.10f}"
    return headers


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = identify(gw, rt, request)
    parsed = validate(ChatCompletionRequest, await read_json(request, _limit(rt)))
    chat = parsed.typed
    plan = route(gw, rt, RouteRequest(
        model=chat.model, mode="chat", needs=chat.capabilities_needed(),
        prompt_tokens=count_messages(parsed.body["messages"]),
        max_output_tokens=chat.max_completion_tokens or chat.max_tokens,
        min_quality=rt.config.routing.default.min_quality), principal)
    deadline = _deadline(rt)
    if chat.stream:
        return await _stream_chat(request, gw, plan, parsed.body, chat, deadline)
    result = await gw.caller.chat(plan, parsed.body, deadline)
    cost = _cost(result)
    return json_response(result.answer.body, call_headers(request, plan, result, cost))


async def _stream_chat(request: web.Request, gw: Gateway, plan: RoutePlan,
                       body: dict[str, Any], chat: ChatCompletionRequest,
                       deadline: float) -> web.StreamResponse:
    stream = await gw.caller.open_stream(plan, body, deadline)
    # The cost is known only when the stream ends, after the headers are sent; it is recorded
    # on the attempt span (gen_ai.usage.*) and, when asked for, in the usage chunk.
    headers = call_headers(request, plan, None, None)
    headers["x-podium-deployment"] = stream.deployment.id
    headers["x-podium-attempts"] = str(stream.attempts)
    return await sse_response(request, headers, stream.chunks(),
                              include_usage=chat.wants_usage_in_stream)


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = identify(gw, rt, request)
    parsed = validate(EmbeddingRequest, await read_json(request, _limit(rt)))
    emb = parsed.typed
    inputs = emb.input if isinstance(emb.input, list) else [emb.input]
    tokens = sum(count_text(i) if isinstance(i, str) else 1 for i in inputs)
    plan = route(gw, rt, RouteRequest(model=emb.model, mode="embedding", needs=frozenset(),
                                      prompt_tokens=tokens, max_output_tokens=None,
                                      min_quality=0), principal)
    result = await gw.caller.embed(plan, parsed.body, _deadline(rt))
    body = result.answer.body
    if emb.encoding_format == "base64":
        body = {**body, "data": [{**d, "embedding": to_base64(d["embedding"])}
                                 for d in body["data"]]}
    return json_response(body, call_headers(request, plan, result, _cost(result)))


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = identify(gw, rt, request)
    ids = rt.router.visible_groups(principal)
    if any(d.mode == "chat" and principal.may_use(d.group) for d in rt.catalog.deployments):
        ids.append(AUTO)
    return json_response(model_list(ids, rt.loaded_at), {})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"}, {})


async def readyz(request: web.Request) -> web.Response:
    ready, detail = request.app[GATEWAY].ready()
    return json_response({"status": "ready" if ready else "not_ready", "detail": detail}, {},
                         status=200 if ready else 503)


def _cost(result: CallResult[ChatAnswer] | CallResult[EmbeddingAnswer]) -> float:
    usage = result.answer.usage
    return result.deployment.cost(usage.prompt_tokens, usage.completion_tokens)


def _limit(rt: Runtime) -> int:
    return rt.config.server.max_body_bytes


def _deadline(rt: Runtime) -> float:
    return asyncio.get_running_loop().time() + rt.config.server.request_timeout_s
