"""`POST /v1/route/explain`: the routing decision for a chat request, as this caller would get
it, without calling a model: the same hops as live traffic (`Planner.chat`), stopped after the
route."""

from __future__ import annotations

from aiohttp import web

from gateway.http.governed import identify
from gateway.pipeline.egress import json_response
from gateway.pipeline.ingress import ChatCompletionRequest, read_json, validate_call
from gateway.pipeline.route import explain
from gateway.runtime import GATEWAY


async def route_explain(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    parsed = validate_call(ChatCompletionRequest,
                           await read_json(request, rt.config.server.max_body_bytes))
    await gw.sync_breakers()
    decision = await gw.planner(rt).chat(principal, parsed, request.headers)
    return json_response(explain(decision, gw.health, callers_view=True))
