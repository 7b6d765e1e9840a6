"""A deterministic OpenAI-compatible upstream, served over real HTTP.

Podium's offline default config points at this server, and the test suite uses it as its fake
provider. Failures are scripted by keywords in the requested model name (see _KEYWORD_ERRORS,
``hang`` and ``midstream`` here, and the scripted answers in `answers.py`), so a test picks a
behaviour per request, not per server.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import random
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.simulator import responses_api
from gateway.simulator.answers import (
    CREATED,
    SimError,
    ceil_tokens,
    completion,
    positive_int,
    stream_chunks,
)
from gateway.simulator.vectors import text_vector
from gateway.translate import sse

__all__ = ["RECORDED", "RecordedRequest", "SimModel", "build_simulator_app", "start_simulator"]

Json = dict[str, Any]


@dataclass(frozen=True)
class SimModel:
    latency_ms: float = 0.0  # delay before answering (for streams: before the first chunk)
    fail_rate: float = 0.0  # probability of a 503, drawn from the app's seeded RNG


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON body, or None when absent or malformed


@dataclass
class _SimState:
    models: Mapping[str, SimModel]
    api_key: str | None
    rng: random.Random
    ids: Iterator[int]  # one counter for completion and tool-call ids


RECORDED: web.AppKey[collections.deque[RecordedRequest]] = web.AppKey(
    "podium_sim_recorded", collections.deque
)
_STATE: web.AppKey[_SimState] = web.AppKey("podium_sim_state", _SimState)
_BODY: web.RequestKey[Any] = web.RequestKey("podium_sim_body", object)

_RECORD_LIMIT = 1000
_MAX_BODY = 64 * 1024 * 1024  # like a real provider, accept large prompts (aiohttp: 1 MiB)
_HANG_SECONDS = 3600.0
_DEFAULT_DIMENSIONS = 8
_MAX_DIMENSIONS = 16384
_MAX_INPUTS = 2048
_MALFORMED = object()  # sentinel: a body was sent but is not JSON
_BAD = "invalid_request_error"
_CTX_MESSAGE = "This model's maximum context length is 8192 tokens (simulated)."

# keyword -> (status, type, code, message); checked in this order, first match wins.
_KEYWORD_ERRORS: tuple[tuple[str, int, str, str | None, str], ...] = (
    ("error500", 500, "server_error", None, "The simulated server had an error."),
    ("e503", 503, "server_error", None, "The simulated server is overloaded."),
    ("rate429", 429, "rate_limit_error", "rate_limit_exceeded", "Simulated rate limit reached."),
    ("badreq", 400, _BAD, None, "Simulated invalid request."),
    ("ctxlimit", 400, _BAD, "context_length_exceeded", _CTX_MESSAGE),
    ("policy400", 400, _BAD, "content_policy_violation",
     "The request was rejected by the simulated content policy."),
)

def _error(exc: SimError) -> web.Response:
    error = {"message": exc.message, "type": exc.err_type, "param": None, "code": exc.code}
    return _json({"error": error}, status=exc.status, headers=exc.headers)


def _json(obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps(obj)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _parse_body(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _MALFORMED


def _check_auth(request: web.Request) -> None:
    expected = request.app[_STATE].api_key
    if expected is not None and request.headers.get("Authorization") != f"Bearer {expected}":
        raise SimError(401, "Incorrect API key provided.", code="invalid_api_key")


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[_BODY] = body = _parse_body(await request.read())
    # Recorded before auth, so tests can inspect rejected requests too.
    recorded = RecordedRequest(
        request.method, request.path, dict(request.headers), None if body is _MALFORMED else body
    )
    request.app[RECORDED].append(recorded)
    try:
        _check_auth(request)
        return await handler(request)
    except SimError as exc:
        return _error(exc)
    except web.HTTPException as exc:  # the router's 404/405 must be OpenAI-shaped too
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = "unknown_url" if exc.status == 404 else None
        return _error(SimError(exc.status, exc.reason, code=code, headers=allow))


def _json_body(request: web.Request, required: str) -> Json:
    body = request[_BODY]
    if body is _MALFORMED:
        raise SimError(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        raise SimError(400, "The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise SimError(400, "You must provide a 'model' parameter.")
    if required not in body:
        raise SimError(400, f"You must provide a '{required}' parameter.")
    return body


async def _behave(state: _SimState, model: str) -> None:
    """Apply keyword failures, the random failure rate, hangs and latency, in that order."""
    for keyword, status, err_type, code, message in _KEYWORD_ERRORS:
        if keyword in model:
            headers = {"Retry-After": "7"} if status == 429 else None
            raise SimError(status, message, err_type, code, headers)
    sim = state.models.get(model, SimModel())
    # Only failing models draw, so unrelated traffic cannot shift a seeded failure sequence.
    if sim.fail_rate > 0 and state.rng.random() < sim.fail_rate:
        raise SimError(503, "Simulated random upstream failure.", "server_error")
    if "hang" in model:
        await asyncio.sleep(_HANG_SECONDS)  # ends early when a disconnect cancels the handler
    if sim.latency_ms > 0:
        await asyncio.sleep(sim.latency_ms / 1000)


async def _stream(request: web.Request, completion: Json, body: Json) -> web.StreamResponse:
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    abort_at = 2 if "midstream" in body["model"] else -1  # after the role chunk and one more
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    for sent, chunk in enumerate(stream_chunks(completion, include_usage)):
        if sent == abort_at:
            resp.force_close()
            if request.transport is not None:  # no terminating chunk: the client sees a cut body
                request.transport.close()
            return resp
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\n")  # one network write each
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    body = _json_body(request, "messages")
    msgs = body["messages"]
    if not (isinstance(msgs, list) and msgs and all(isinstance(m, dict) for m in msgs)):
        raise SimError(400, "'messages' must be a non-empty array of message objects.")
    state = request.app[_STATE]
    answer = completion(body, state.ids)  # built first so bad parameters fail with 400 early
    await _behave(state, body["model"])
    if body.get("stream") is True:
        return await _stream(request, answer, body)
    return _json(answer)


async def _responses(request: web.Request) -> web.StreamResponse:
    body = _json_body(request, "input")
    state = request.app[_STATE]
    asked, done = responses_api.answer(body, state.ids)
    await _behave(state, body["model"])
    if body.get("stream") is not True:
        return _json(responses_api.response(asked, done))
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    for event in responses_api.events(asked, done):
        await resp.write(sse.encode(event))
    await resp.write_eof()
    return resp


def _is_tokens(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(type(t) is int for t in value)


def _embedding_inputs(value: Any) -> list[str | list[int]]:
    if isinstance(value, str) or _is_tokens(value):
        return [value]
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, str) or _is_tokens(v) for v in value)
    ):
        return list(value)
    raise SimError(400, "'input' must be a string, an array of strings, or token arrays.")


def _encode(vector: list[float], encoding: Any) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def _embeddings(request: web.Request) -> web.StreamResponse:
    body = _json_body(request, "input")
    inputs = _embedding_inputs(body["input"])
    dimensions = positive_int(body, "dimensions", _DEFAULT_DIMENSIONS) or _DEFAULT_DIMENSIONS
    if dimensions > _MAX_DIMENSIONS or len(inputs) > _MAX_INPUTS:
        # Like a real provider, refuse work that would stall the server (it runs in-process).
        raise SimError(400, f"At most {_MAX_INPUTS} inputs of at most {_MAX_DIMENSIONS} "
                             "dimensions per request.")
    await _behave(request.app[_STATE], body["model"])
    vectors = [_encode(text_vector(i, dimensions), body.get("encoding_format")) for i in inputs]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    tokens = sum(ceil_tokens(len(i)) if isinstance(i, str) else len(i) for i in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": body["model"], "usage": usage})


async def _models(request: web.Request) -> web.StreamResponse:
    data = [
        {"id": name, "object": "model", "created": CREATED, "owned_by": "podium-simulator"}
        for name in request.app[_STATE].models
    ]
    return _json({"object": "list", "data": data})


def build_simulator_app(
    models: Mapping[str, SimModel] | None = None, *, api_key: str | None = None, seed: int = 0
) -> web.Application:
    app = web.Application(middlewares=[_gate], client_max_size=_MAX_BODY)
    app[RECORDED] = collections.deque(maxlen=_RECORD_LIMIT)
    rng = random.Random(seed)
    app[_STATE] = _SimState(dict(models or {}), api_key, rng, itertools.count(1))
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/embeddings", _embeddings)
    app.router.add_post("/v1/responses", _responses)
    app.router.add_get("/v1/models", _models)
    return app


async def start_simulator(
    host: str,
    port: int,
    models: Mapping[str, SimModel] | None = None,
    *,
    api_key: str | None = None,
) -> tuple[web.AppRunner, int]:
    """Serve the simulator; returns the runner (the caller cleans it up) and the bound port."""
    app = build_simulator_app(models, api_key=api_key)
    # handler_cancellation: a client that disconnects must cancel a `hang`, not leak it.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, runner.addresses[0][1]
