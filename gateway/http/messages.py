"""The Anthropic Messages API: `POST /v1/messages` (plain and streamed) and
`POST /v1/messages/count_tokens`.

A request is translated to a chat body (gateway/translate/anthropic.py) and run through the
chat pipeline (http/pipeline.py), so it is scoped, routed to the cheapest adequate deployment
(any chat deployment: OpenAI-compatible, Anthropic through litellm, or the simulator), cached,
governed and traced exactly as Chat Completions is. The key comes in `x-api-key`, as
Anthropic's SDKs send it, or as a bearer (the same keys and JWTs as everywhere); the
`anthropic-version` and `anthropic-beta` headers are accepted and need no handling, since
Podium answers in the one shape of the current version. Every error on these paths, those of
the edge included, is in Anthropic's shape (http/middleware.py).
"""

from __future__ import annotations

from aiohttp import web

from gateway.errors import ModelNotFound, PodiumError
from gateway.http.governed import accounted, identify, new_context
from gateway.http.pipeline import Served, run_chat
from gateway.pipeline.egress import json_response, open_event_stream, send_json
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest, read_json, validate, validate_call
from gateway.runtime import GATEWAY, REQUEST_ID, Runtime
from gateway.translate import anthropic, sse
from gateway.translate.anthropic_models import CountTokensRequest, MessagesRequest
from gateway.translate.anthropic_stream import MessagesStream
from gateway.translate.ids import new_id
from routing.router import AUTO


async def create_message(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt, api_key_header=True)
    asked = validate_call(MessagesRequest,
                          await read_json(request, rt.config.server.max_body_bytes)).typed
    chat = validate(ChatCompletionRequest, anthropic.to_chat(asked))
    ctx = new_context(request, rt, "messages", principal, asked.model, chat.body,
                      bool(asked.stream))
    async with accounted(request, rt, ctx):
        served = await run_chat(gw, rt, ctx, chat, request.headers)
        headers = {**served.headers, "request-id": request[REQUEST_ID]}
        if served.chunks is not None:
            prompt_tokens = ctx.route.prompt_tokens if ctx.route is not None else 0
            response = await _stream(request, served, headers,
                                     MessagesStream(asked, input_tokens=prompt_tokens))
        else:
            message = anthropic.from_completion(asked, served.answer or {},
                                                message_id=new_id("msg"))
            response = await send_json(request, message, headers)
        await served.done()
        ctx.outcome.status = response.status
        return response


async def count_tokens(request: web.Request) -> web.Response:
    """The prompt's size as Podium counts it (routing and limits count the same way); no model
    is called. The model must be one this key may use, as for a message."""
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt, api_key_header=True)
    asked = validate_call(CountTokensRequest,
                          await read_json(request, rt.config.server.max_body_bytes)).typed
    _check_model(rt, principal, asked.model)
    return json_response(anthropic.count_tokens(asked))


def _check_model(rt: Runtime, principal: Principal, model: str) -> None:
    catalog = rt.catalog
    group = model if model in catalog.groups else None
    if group is None and model in catalog.by_id:
        group = catalog.by_id[model].group
    usable = model == AUTO or (group is not None and principal.may_use(group)
                               and catalog.groups[group][0].mode == "chat")
    if not usable:
        raise ModelNotFound(f"model: {model}", param="model")


async def _stream(request: web.Request, served: Served, headers: dict[str, str],
                  events: MessagesStream) -> web.StreamResponse:
    """Anthropic's events, from the chunks as they come; a failure after the start ends the
    stream with Anthropic's `error` event (the status has been sent)."""
    resp = await open_event_stream(request, headers)
    try:
        async for chunk in served.stream():
            if out := events.feed(chunk):
                await resp.write(sse.encode_all(out))
        closing = events.finish()
    except PodiumError as err:
        closing = events.fail(err)
    finally:
        await served.close()  # the client may have left: bill what was produced, now
    await resp.write(sse.encode_all(closing))
    await resp.write_eof()
    return resp
