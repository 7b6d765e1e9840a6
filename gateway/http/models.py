"""The request, hop by hop: the HTTP handlers that run ingress → identity → route → call → egress.

Each hop is a function with a typed input and output and its own span; the handlers only
sequence them. A `Runtime` is read once at the start, so the whole request sees one config.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from aiohttp import web

from gateway.app import ACCESS, GATEWAY, REQUEST_ID, Gateway, Runtime
from gateway.observability.metrics import CONTENT_TYPE
from gateway.pipeline.egress import (
    json_response,
    model_list,
)
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import (
    ChatCompletionRequest,
    Parsed,
    read_json,
    validate_call,
)
from gateway.pipeline.permissions import PermissionScope, resolve_embedding_scope, resolve_scope
from gateway.pipeline.route import chat_route_request, explain
from routing.fallback import CallResult
from routing.router import AUTO, RoutePlan, RouteRequest


def add_routes(app: web.Application) -> None:
    from gateway.http.chat import chat_completions  # these build on the hops defined here
    from gateway.http.embeddings import embeddings

    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/route/explain", route_explain)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def identify(gw: Gateway, rt: Runtime, request: web.Request) -> Principal:
    with gw.telemetry.span("podium.identity") as span:
        principal = await rt.auth.authenticate(request.headers.get("Authorization"))
        request[ACCESS].update(key_id=principal.key_id, team=principal.team)
        if span.is_recording():
            span.set_attributes({"podium.key.id": principal.key_id,
                                 "podium.key.name": principal.name,
                                 "podium.key.source": principal.source,
                                 "podium.team": principal.team or ""})
        return principal


def permit(gw: Gateway, rt: Runtime, principal: Principal, parsed: Parsed[ChatCompletionRequest],
           request: web.Request) -> PermissionScope:
    with gw.telemetry.span("podium.permissions") as span:
        scope = resolve_scope(principal, parsed.typed, parsed.body, request.headers,
                              rt.config.pii)
        _scope_attributes(span, scope)
        return scope


def permit_embedding(gw: Gateway, rt: Runtime, principal: Principal, texts: list[str],
                     request: web.Request) -> PermissionScope:
    with gw.telemetry.span("podium.permissions") as span:
        scope = resolve_embedding_scope(principal, texts, request.headers, rt.config.pii)
        _scope_attributes(span, scope)
        return scope


def _scope_attributes(span: Any, scope: PermissionScope) -> None:
    if span.is_recording():
        span.set_attributes({"podium.data_class": scope.data_class,
                             "podium.data_class.reasons": scope.reasons,
                             "podium.pii.pseudonymize": scope.pseudonymizer is not None})
        for kind, count in scope.findings.items():
            span.set_attribute(f"podium.pii.{kind}", count)


async def route(gw: Gateway, rt: Runtime, req: RouteRequest,
                principal: Principal) -> RoutePlan:
    await gw.sync_breakers()
    with gw.telemetry.span("podium.route") as span:
        plan = rt.router.plan(req, principal, gw.health)
        if span.is_recording():
            span.set_attributes({
                "podium.route.rule": plan.rule, "podium.route.strategy": plan.strategy,
                "podium.route.requested_model": req.model,
                "podium.route.min_quality": plan.min_quality,
                "podium.route.chain": [d.id for d in plan.chain],
                "podium.route.prompt_tokens": req.prompt_tokens})
            for c in plan.candidates:
                span.add_event("candidate", {"deployment": c.deployment.id, "kept": c.kept,
                                             "reason": c.reason, "source": c.source})
        return plan


def call_headers(request: web.Request, plan: RoutePlan,
                 result: CallResult[Any] | None) -> dict[str, str]:
    headers = {"x-request-id": request[REQUEST_ID], "x-podium-route": plan.rule}
    if result is not None:
        headers["x-podium-deployment"] = result.deployment.id
        headers["x-podium-attempts"] = str(result.attempts)
        headers["x-podium-cost-usd"] = f"{result.cost_usd:.10f}"
        if result.escalations:
            headers["x-podium-escalations"] = str(len(result.escalations))
    return headers


async def route_explain(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(gw, rt, request)
    parsed = validate_call(ChatCompletionRequest, await read_json(request, _limit(rt)))
    scope = permit(gw, rt, principal, parsed, request)
    req = chat_route_request(parsed.typed, parsed.body, principal, request.headers,
                             rt.router.tokens, scope)
    plan = await route(gw, rt, req, principal)
    return json_response(explain(plan, req, gw.health), {"x-request-id": request[REQUEST_ID]})


async def models(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(gw, rt, request)
    ids = rt.router.visible_groups(principal)
    if any(d.mode == "chat" and principal.may_use(d.group) for d in rt.catalog.deployments):
        ids.append(AUTO)
    return json_response(model_list(ids, rt.loaded_at), {})


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok", "pid": os.getpid()}, {})


async def readyz(request: web.Request) -> web.Response:
    ready, parts = request.app[GATEWAY].ready()
    return json_response({"status": "ready" if ready else "not_ready", **parts}, {},
                         status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format; open like /healthz (put it behind your network policy)."""
    return web.Response(body=request.app[GATEWAY].metrics.exposition(),
                        headers={"Content-Type": CONTENT_TYPE})


def _limit(rt: Runtime) -> int:
    return rt.config.server.max_body_bytes


def deadline_for(rt: Runtime) -> float:
    return asyncio.get_running_loop().time() + rt.config.server.request_timeout_s
