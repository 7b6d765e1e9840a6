"""`POST /v1/embeddings`: identity → permissions → route → plugins → call → egress, governed
like chat (data classes and regions, rate limits, budgets, audit, metrics), without the chat-only
hops (cache, cascades). PII routes embeddings rather than masking them: see permissions.py."""

from __future__ import annotations

from aiohttp import web

from gateway.app import GATEWAY, REQUEST_ID
from gateway.http.chat import accounted, trace_ids
from gateway.http.models import call_headers, deadline_for, identify, permit_embedding, route
from gateway.pipeline.egress import send_json, to_base64
from gateway.pipeline.ingress import EmbeddingRequest, read_json, validate_call
from plugins.base import Outcome, RequestContext
from routing.router import RouteRequest


async def embeddings(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(gw, rt, request)
    parsed = validate_call(EmbeddingRequest,
                      await read_json(request, rt.config.server.max_body_bytes))
    emb = parsed.typed
    ctx = RequestContext(request_id=request[REQUEST_ID], principal=principal, model=emb.model,
                         body=parsed.body, stream=False, facts=None, **trace_ids())
    outcome = Outcome(status=500)
    async with accounted(request, gw, rt, ctx, outcome, "embeddings"):
        inputs = emb.input if isinstance(emb.input, list) else [emb.input]
        texts = [i for i in inputs if isinstance(i, str)]
        scope = permit_embedding(gw, rt, principal, texts, request)
        ctx.data_class, ctx.pii_counts = scope.data_class, scope.findings
        tokens = rt.router.tokens.texts(texts).tokens + sum(
            len(i) if isinstance(i, list) else 1 for i in inputs if not isinstance(i, str))
        plan = await route(gw, rt, RouteRequest(
            model=emb.model, mode="embedding", needs=frozenset(), prompt_tokens=tokens,
            max_output_tokens=None, scope=scope), principal)
        ctx.plan, ctx.prompt_tokens, ctx.reserve_tokens = plan, tokens, tokens
        ctx.reserve_usd = max(d.cost(tokens, 0) for d in plan.chain)
        await rt.chain.on_request(ctx)
        result = await gw.caller.embed(plan, parsed.body, deadline_for(rt), rt.config.routing,
                                       scope)
        outcome.deployment, outcome.attempted = result.deployment.id, result.attempted
        outcome.usage, outcome.cost_usd = result.usage, result.cost_usd
        outcome.upstream_s = result.upstream_s
        body = result.answer.body
        if emb.encoding_format == "base64":
            body = {**body, "data": [{**d, "embedding": to_base64(d["embedding"])}
                                     for d in body["data"]]}
        outcome.status = 200
        return await send_json(request, body, call_headers(request, plan, result))
