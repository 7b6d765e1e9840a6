"""A deterministic OpenAI-compatible upstream, served over real HTTP.

Podium's offline default config points at this server, and the test suite uses it as its fake
provider. Failures are scripted by keywords in the requested model name (see _KEYWORD_ERRORS and
_KEYWORD_ANSWERS, plus ``hang`` and ``midstream``), so a test picks a behaviour per request, not
per server.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import itertools
import math
import random
import re
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.simulator.vectors import text_vector

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

_CREATED = 1_700_000_000  # fixed, so whole responses are reproducible across runs
_FINGERPRINT = "podium-sim"
_RECORD_LIMIT = 1000
_MAX_BODY = 64 * 1024 * 1024  # like a real provider, accept large prompts (aiohttp: 1 MiB)
_HANG_SECONDS = 3600.0
_IMAGE_TOKENS = 85
_DEFAULT_DIMENSIONS = 8
_MAX_DIMENSIONS = 16384
_MAX_INPUTS = 2048
_WORDS_PER_CHUNK = 3
_ARGUMENT_FRAGMENT = 7
_SAY_MARKER = re.compile(r"\[\[say:(.*?)\]\]", re.DOTALL)
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

# keyword -> a scripted poor answer, for cascade checks to catch.
_KEYWORD_ANSWERS: tuple[tuple[str, str], ...] = (
    ("badjson", "this is not JSON {"),
    ("refuse", "I'm sorry, but I can't help with that."),
    ("empty", ""),
)


@dataclass(eq=False)  # exceptions must stay hashable
class _SimError(Exception):
    """An OpenAI-shaped error: raised anywhere, rendered once by the middleware."""

    status: int
    message: str
    err_type: str = _BAD
    code: str | None = None
    headers: Mapping[str, str] | None = None

    def response(self) -> web.Response:
        error = {"message": self.message, "type": self.err_type, "param": None, "code": self.code}
        return _json({"error": error}, status=self.status, headers=self.headers)


def _json(obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = orjson.dumps(obj)
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _ceil_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


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
        raise _SimError(401, "Incorrect API key provided.", code="invalid_api_key")


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
    except _SimError as exc:
        return exc.response()
    except web.HTTPException as exc:  # the router's 404/405 must be OpenAI-shaped too
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        code = "unknown_url" if exc.status == 404 else None
        return _SimError(exc.status, exc.reason, code=code, headers=allow).response()


def _json_body(request: web.Request, required: str) -> Json:
    body = request[_BODY]
    if body is _MALFORMED:
        raise _SimError(400, "We could not parse the JSON body of your request.")
    if not isinstance(body, dict):
        raise _SimError(400, "The request body must be a JSON object.")
    if not isinstance(body.get("model"), str) or not body["model"]:
        raise _SimError(400, "You must provide a 'model' parameter.")
    if required not in body:
        raise _SimError(400, f"You must provide a '{required}' parameter.")
    return body


def _positive_int(body: Json, name: str, default: int | None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if type(value) is not int or value < 1:
        raise _SimError(400, f"Invalid value for '{name}': expected a positive integer.")
    return value


async def _behave(state: _SimState, model: str) -> None:
    """Apply keyword failures, the random failure rate, hangs and latency, in that order."""
    for keyword, status, err_type, code, message in _KEYWORD_ERRORS:
        if keyword in model:
            headers = {"Retry-After": "7"} if status == 429 else None
            raise _SimError(status, message, err_type, code, headers)
    sim = state.models.get(model, SimModel())
    # Only failing models draw, so unrelated traffic cannot shift a seeded failure sequence.
    if sim.fail_rate > 0 and state.rng.random() < sim.fail_rate:
        raise _SimError(503, "Simulated random upstream failure.", "server_error")
    if "hang" in model:
        await asyncio.sleep(_HANG_SECONDS)  # ends early when a disconnect cancels the handler
    if sim.latency_ms > 0:
        await asyncio.sleep(sim.latency_ms / 1000)


def _parts(content: Any) -> list[Json]:
    """Message content as a list of parts; a plain string is a single text part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [p for p in content if isinstance(p, dict)] if isinstance(content, list) else []


def _texts(content: Any) -> list[str]:
    parts = _parts(content)
    return [p["text"] for p in parts if p.get("type") == "text" and isinstance(p.get("text"), str)]


def _prompt_tokens(messages: list[Json]) -> int:
    parts = [p for m in messages for p in _parts(m.get("content"))]
    images = sum(p.get("type") in ("image_url", "input_image") for p in parts)
    chars = sum(len(text) for m in messages for text in _texts(m.get("content")))
    return _ceil_tokens(chars) + images * _IMAGE_TOKENS


def _answer_text(body: Json) -> str:
    model = body["model"]
    for keyword, answer in _KEYWORD_ANSWERS:
        if keyword in model:
            return answer
    users = [m for m in body["messages"] if m.get("role") == "user"]
    last_user = " ".join(_texts(users[-1].get("content"))) if users else ""
    if marker := _SAY_MARKER.search(last_user):  # a scripted answer overrides every other rule
        return marker.group(1)
    text = f"Simulated answer from {model}: {last_user[:200]}"
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") in ("json_object", "json_schema"):
        return orjson.dumps({"answer": text, "model": model}).decode()
    return text


def _truncate(content: str, body: Json) -> tuple[str, str]:
    limit = _positive_int(body, "max_tokens", _positive_int(body, "max_completion_tokens", None))
    if limit is not None and _ceil_tokens(len(content)) > limit:
        return content[: limit * 4], "length"
    return content, "stop"


def _fake_arguments(function: Json) -> str:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    args = {}
    for name, schema in (props or {}).items():
        kind = schema.get("type") if isinstance(schema, dict) else None
        fakes = {"string": f"sim-{name}", "integer": 42, "number": 42, "boolean": True}
        args[name] = fakes.get(kind) if isinstance(kind, str) else None
    return orjson.dumps(args).decode()


def _chosen_functions(body: Json) -> list[Json]:
    """The function definitions to call, or [] when the model should answer in text."""
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return []
    if body["messages"][-1].get("role") == "tool":
        return []  # the tool result is in: answer in text, as a real model would
    functions = [t["function"] for t in tools if isinstance(t, dict) and "function" in t]
    functions = [f for f in functions if isinstance(f, dict)]
    if isinstance(choice, dict):
        wanted = (choice.get("function") or {}).get("name")
        if not (named := [f for f in functions if f.get("name") == wanted]):
            raise _SimError(400, f"Invalid value for 'tool_choice': no function named {wanted!r}.")
        return named
    return functions[: 1 if body.get("parallel_tool_calls") is False else 2]


def _choice(index: int, body: Json, state: _SimState) -> tuple[Json, int]:
    """One choice plus its completion-token count."""
    message: Json = {"role": "assistant", "content": None, "refusal": None}
    if functions := _chosen_functions(body):
        message["tool_calls"] = [
            {
                "id": f"call_sim_{next(state.ids)}",
                "type": "function",
                "function": {"name": f.get("name", ""), "arguments": _fake_arguments(f)},
            }
            for f in functions
        ]
        finish = "tool_calls"
        chars = sum(len(c["function"]["arguments"]) for c in message["tool_calls"])
    else:
        message["content"], finish = _truncate(_answer_text(body), body)
        chars = len(message["content"])
    choice = {"index": index, "message": message, "logprobs": None, "finish_reason": finish}
    return choice, _ceil_tokens(chars)


def _completion(body: Json, state: _SimState) -> Json:
    completion_id = f"chatcmpl-sim-{next(state.ids)}"
    scored = [_choice(index, body, state) for index in range(_positive_int(body, "n", 1) or 1)]
    prompt = _prompt_tokens(body["messages"])
    generated = sum(tokens for _, tokens in scored)
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": _CREATED,
        "model": body["model"],
        "system_fingerprint": _FINGERPRINT,
        "choices": [choice for choice, _ in scored],
        "usage": dict(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated
        ),
    }


def _pieces(text: str, size: int) -> list[str]:
    """Split text into runs of `size` words that concatenate back to exactly `text`."""
    words = re.split(r"(?<=\s)(?=\S)", text) if text else []
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def _choice_deltas(message: Json, tiny: bool) -> Iterator[Json]:
    yield {"role": "assistant", "content": ""}
    for i, call in enumerate(message.get("tool_calls") or []):
        head = {"name": call["function"]["name"], "arguments": ""}
        yield {"tool_calls": [{"index": i, "id": call["id"], "type": "function", "function": head}]}
        args = call["function"]["arguments"]
        for start in range(0, len(args), _ARGUMENT_FRAGMENT):
            fragment = args[start : start + _ARGUMENT_FRAGMENT]
            yield {"tool_calls": [{"index": i, "function": {"arguments": fragment}}]}
    content = message["content"] or ""
    # "tinychunks" models stream 4 characters at a time: words split across chunks.
    pieces = ([content[i : i + 4] for i in range(0, len(content), 4)] if tiny
              else _pieces(content, _WORDS_PER_CHUNK))
    for piece in pieces:
        yield {"content": piece}


def _stream_chunks(completion: Json, include_usage: bool) -> Iterator[Json]:
    """Derive the chunks from the full answer, so streamed and plain answers always agree."""
    base = {k: completion[k] for k in ("id", "object", "created", "model", "system_fingerprint")}
    base["object"] = "chat.completion.chunk"
    usage = {"usage": None} if include_usage else {}
    for choice in completion["choices"]:
        index = choice["index"]
        tiny = "tinychunks" in completion["model"]
        deltas = [(d, None) for d in _choice_deltas(choice["message"], tiny)]
        for delta, finish in [*deltas, ({}, choice["finish_reason"])]:
            entry = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            yield {**base, "choices": [entry], **usage}
    if include_usage:
        yield {**base, "choices": [], "usage": completion["usage"]}


async def _stream(request: web.Request, completion: Json, body: Json) -> web.StreamResponse:
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    abort_at = 2 if "midstream" in body["model"] else -1  # after the role chunk and one more
    resp = web.StreamResponse(headers={"Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    await resp.prepare(request)
    for sent, chunk in enumerate(_stream_chunks(completion, include_usage)):
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
        raise _SimError(400, "'messages' must be a non-empty array of message objects.")
    state = request.app[_STATE]
    completion = _completion(body, state)  # built first so bad parameters fail with 400 early
    await _behave(state, body["model"])
    if body.get("stream") is True:
        return await _stream(request, completion, body)
    return _json(completion)


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
    raise _SimError(400, "'input' must be a string, an array of strings, or token arrays.")


def _encode(vector: list[float], encoding: Any) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


async def _embeddings(request: web.Request) -> web.StreamResponse:
    body = _json_body(request, "input")
    inputs = _embedding_inputs(body["input"])
    dimensions = _positive_int(body, "dimensions", _DEFAULT_DIMENSIONS) or _DEFAULT_DIMENSIONS
    if dimensions > _MAX_DIMENSIONS or len(inputs) > _MAX_INPUTS:
        # Like a real provider, refuse work that would stall the server (it runs in-process).
        raise _SimError(400, f"At most {_MAX_INPUTS} inputs of at most {_MAX_DIMENSIONS} "
                             "dimensions per request.")
    await _behave(request.app[_STATE], body["model"])
    vectors = [_encode(text_vector(i, dimensions), body.get("encoding_format")) for i in inputs]
    data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
    tokens = sum(_ceil_tokens(len(i)) if isinstance(i, str) else len(i) for i in inputs)
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return _json({"object": "list", "data": data, "model": body["model"], "usage": usage})


async def _models(request: web.Request) -> web.StreamResponse:
    data = [
        {"id": name, "object": "model", "created": _CREATED, "owned_by": "podium-simulator"}
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
