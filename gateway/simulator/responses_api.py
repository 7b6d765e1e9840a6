"""The simulator's `POST /v1/responses`: an upstream that speaks the OpenAI Responses API
itself, so that Podium's pass-through (`model_info.supports: [responses]`) is tested against a
real server. It answers through Podium's own translation, so a Responses request gets the
same answer here as its chat translation gets from `/v1/chat/completions`.

Stateless, like the requests Podium passes through (`store: false`, the conversation in
`input`): a `previous_response_id` is refused, as a real server refuses an id it never issued.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.errors import PodiumError
from gateway.pipeline.ingress import validate
from gateway.simulator.answers import SimError, completion, stream_chunks
from gateway.translate import responses
from gateway.translate.responses_models import ResponsesRequest
from gateway.translate.responses_stream import ResponsesStream

Json = dict[str, Any]


def answer(body: Json, ids: Iterator[int]) -> tuple[ResponsesRequest, Json]:
    """The typed request and the chat completion that answers it (400 for what the
    translation refuses)."""
    try:
        asked = validate(ResponsesRequest, body).typed
        if asked.previous_response_id is not None:
            raise SimError(400, f"Previous response with id {asked.previous_response_id!r} "
                                "not found.", code="previous_response_not_found")
        return asked, completion(responses.to_chat(asked), ids)
    except PodiumError as err:
        raise SimError(err.status, err.message, code=err.code) from None


def response(asked: ResponsesRequest, done: Json) -> Json:
    return responses.from_completion(asked, done)


def events(asked: ResponsesRequest, done: Json) -> list[Json]:
    """The typed events a stream of the answer carries, in the order OpenAI sends them."""
    stream = ResponsesStream(asked)
    out: list[Json] = []
    for chunk in stream_chunks(done, include_usage=True):
        out += stream.feed(chunk)
    return out + stream.finish()
