"""`POST /v1/chat/completions`: the front door that speaks the pipeline's own API.

    ingress → identity → the chat pipeline (http/pipeline.py) → egress, and the plugins'
    on_complete exactly once at the end (http/governed.py).

A `Runtime` is read once at the start, so the whole request sees one config.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from gateway.http.governed import accounted, identify, new_context
from gateway.http.pipeline import run_chat
from gateway.pipeline.egress import send_json, sse_response
from gateway.pipeline.ingress import ChatCompletionRequest, read_json, validate_call
from gateway.runtime import GATEWAY


async def chat_completions(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    parsed = validate_call(ChatCompletionRequest,
                           await read_json(request, rt.config.server.max_body_bytes))
    ctx = new_context(request, rt, "chat", principal, parsed.typed.model, parsed.body,
                      bool(parsed.typed.stream))
    async with accounted(request, rt, ctx):
        served = await run_chat(gw, rt, ctx, parsed, request.headers)
        if served.chunks is not None:
            response = await sse_response(request, served.headers, served.chunks,
                                          include_usage=_wants_usage(ctx.body))
        else:
            response = await send_json(request, served.answer, served.headers)
        await served.done()
        ctx.outcome.status = response.status
        return response


def _wants_usage(body: Mapping[str, Any]) -> bool:
    return bool((body.get("stream_options") or {}).get("include_usage"))
