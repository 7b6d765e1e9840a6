"""The OpenAI Responses API: `POST /v1/responses` (plain and streamed), and
`GET`/`DELETE /v1/responses/{id}`.

A request is translated to a chat body (gateway/translate/responses.py) and run through the
chat pipeline like any other (http/pipeline.py): scope, route, cache, governance and traces
are the same as for Chat Completions. Where the chosen deployment speaks Responses itself
(`model_info.supports: [responses]`) the client's own body goes to it instead, with the stored
conversation in `input` and `store: false` (Podium keeps the state; the upstream keeps none).

Conversation state. Unless the request says `store: false`, the response is stored for the
calling key (`StoredResponse`: the response and every item of the conversation up to it)
before the client receives it, so a follow-up from any worker finds it. Only that key can read,
continue or delete it; for any other caller it does not exist (404 on GET/DELETE, 400
`previous_response_not_found` on a follow-up, as OpenAI answers). It is kept
`responses.retention_s`. Personal data: the state is stored as the client sent and received
it, and a follow-up's stored history is part of its chat body, so it is scanned, classified and
masked again with the new request: a deployment that may not see personal data never sees it
from history either.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, PodiumError, ResponseNotFound
from gateway.http.governed import accounted, identify, new_context
from gateway.http.pipeline import Served, run_chat
from gateway.pipeline.egress import json_response, open_event_stream, send_json
from gateway.pipeline.identity import Principal
from gateway.pipeline.ingress import ChatCompletionRequest, read_json, validate, validate_call
from gateway.runtime import GATEWAY, Gateway
from gateway.storage.records import StoredResponse
from gateway.translate import responses, sse
from gateway.translate.ids import new_id
from gateway.translate.responses_models import ResponsesRequest
from gateway.translate.responses_stream import ResponsesStream
from routing.providers.base import Wire

Json = dict[str, Any]


async def create_response(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    rt = gw.runtime
    principal = await identify(request, gw, rt)
    raw = await read_json(request, rt.config.server.max_body_bytes)
    asked = validate_call(ResponsesRequest, raw).typed
    turn = _Turn(gw, asked, principal.key_id, rt.config.responses.retention_s,
                 await _history(gw, asked, principal))
    chat = validate(ChatCompletionRequest, responses.to_chat(asked, turn.history))
    ctx = new_context(request, rt, "responses", principal, asked.model, chat.body,
                      bool(asked.stream))
    async with accounted(request, rt, ctx):
        served = await run_chat(gw, rt, ctx, chat, request.headers, turn.wire(raw))
        if served.chunks is not None:
            response = await _stream(request, served, turn)
        else:
            response = await send_json(request, await turn.answered(served), served.headers)
        await served.done()
        ctx.outcome.status = response.status
        return response


async def get_response(request: web.Request) -> web.Response:
    stored = await _own(request)
    return json_response(stored.response)


async def delete_response(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    principal = await identify(request, gw, gw.runtime)
    response_id = request.match_info["response_id"]
    if not await gw.responses.delete(response_id, principal.key_id):
        raise _not_found(response_id)
    return json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def _own(request: web.Request) -> StoredResponse:
    gw = request.app[GATEWAY]
    principal = await identify(request, gw, gw.runtime)
    response_id = request.match_info["response_id"]
    stored = await gw.responses.get(response_id, principal.key_id)
    if stored is None:
        raise _not_found(response_id)
    return stored


def _not_found(response_id: str) -> ResponseNotFound:
    return ResponseNotFound(f"Response with id {response_id!r} not found.",
                            param="response_id")


async def _history(gw: Gateway, asked: ResponsesRequest,
                   principal: Principal) -> list[Json]:
    """The stored conversation `previous_response_id` continues (this key's only)."""
    previous = asked.previous_response_id
    if previous is None:
        return []
    stored = await gw.responses.get(previous, principal.key_id)
    if stored is None:
        raise BadRequest(f"Previous response with id {previous!r} not found.",
                         param="previous_response_id", code="previous_response_not_found")
    return stored.items


@dataclass
class _Turn:
    """One response being made: its id, the conversation it continues, and where it goes."""
    gw: Gateway
    asked: ResponsesRequest
    key_id: str
    retention_s: float
    history: Sequence[Json]
    response_id: str = field(default_factory=lambda: new_id("resp"))
    created_at: int = field(default_factory=lambda: int(time.time()))

    def wire(self, raw: Mapping[str, Any]) -> Wire:
        """The client's body for a deployment that speaks Responses: stateless upstream."""
        body = {k: v for k, v in raw.items() if k != "previous_response_id"}
        if self.history:
            body["input"] = [*self.history, *responses.input_items(self.asked)]
        body["store"] = False
        return Wire("responses", body)

    async def answered(self, served: Served) -> Json:
        """The response object for a whole answer, stored before the client sees it."""
        if served.native is not None:
            response = self._adopt(served.native)
        else:
            response = responses.from_completion(self.asked, served.answer or {},
                                                 response_id=self.response_id,
                                                 created_at=self.created_at)
        await self.keep(response)
        return response

    async def keep(self, response: Json) -> None:
        if self.asked.store is False or response.get("status") == "failed":
            return
        items = responses.conversation_items(self.history, self.asked, response)
        now = time.time()
        await self.gw.responses.put(StoredResponse(
            id=self.response_id, key_id=self.key_id, created_at=now,
            expires_at=now + self.retention_s, response=response, items=items))

    def _adopt(self, native: Json) -> Json:
        """An upstream's own response, renamed as Podium's (the upstream stored nothing)."""
        return {**native, "id": self.response_id, "created_at": self.created_at,
                "previous_response_id": self.asked.previous_response_id,
                "store": self.asked.store is not False,
                "metadata": dict(self.asked.metadata or {})}


async def _stream(request: web.Request, served: Served, turn: _Turn) -> web.StreamResponse:
    """The typed events, from the chunks as they come; the finished response is stored
    before `response.completed` goes out."""
    events = ResponsesStream(turn.asked, response_id=turn.response_id,
                             created_at=turn.created_at)
    resp = await open_event_stream(request, served.headers)
    try:
        async for chunk in served.stream():
            if out := events.feed(chunk):
                await resp.write(sse.encode_all(out))
        closing = events.finish()
        if events.response is not None:
            await turn.keep(events.response)
    except PodiumError as err:
        closing = events.fail(err)
    finally:
        await served.close()  # the client may have left: bill what was produced, now
    await resp.write(sse.encode_all(closing))
    await resp.write_eof()
    return resp
