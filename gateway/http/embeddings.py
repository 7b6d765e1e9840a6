"""`POST /v1/embeddings`: identity → permissions → route → plugins → call → egress, governed
like chat (data classes and regions, rate limits, budgets, audit, metrics), without the chat-only
hops (cache, cascades). PII routes embeddings rather than masking them: see permissions.py."""

from __future__ import annotations

from aiohttp import web

from gateway.http.governed import accounted, identify, journal_answer, new_context
from gateway.pipeline.egress import podium_headers, send_json, to_base64
from gateway.pipeline.ingress import EmbeddingRequest, read_json, validate_call
from gateway.pipeline.route import embedding_reservation
from gateway.runtime import GATEWAY


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    parsed = validate_call(EmbeddingRequest,
                           await read_json(request, rt.config.server.max_body_bytes))
    emb = parsed.typed
    ctx = new_context(request, rt, "embeddings", principal, emb.model, parsed.body, False)
    async with accounted(request, rt, ctx):
        await gw.sync_breakers()
        planner = gw.planner(rt)
        ctx.permitted(await planner.permit_embedding(principal, emb, request.headers))
        decision = planner.route_embedding(principal, emb, ctx.permission)
        ctx.routed(decision.request, decision.plan, embedding_reservation(decision))
        ctx.held(await rt.chain.on_request(ctx))
        result = await gw.caller.embed(decision.plan, parsed.body, ctx.deadline(),
                                       rt.config.routing, decision.scope)
        ctx.outcome.called(result)
        body = result.answer.body
        if emb.encoding_format == "base64":
            body = {**body, "data": [{**d, "embedding": to_base64(d["embedding"])}
                                     for d in body["data"]]}
        ctx.outcome.status = 200
        headers = podium_headers(ctx)
        journal_answer(gw, ctx)
        return await send_json(request, body, headers)
