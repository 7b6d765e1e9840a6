"""A lean OpenAI-compatible upstream for measurement: no delay, no failures, no bookkeeping
beyond two counters.

    POST /v1/chat/completions   a chat.completion with usage, or (stream: true) SSE chunks
                                ending with a usage chunk (when asked) and `data: [DONE]`
    GET  /health                200
    GET  /stats                 {"chat": n, "stream": n}: requests served, so the harness can
                                tell a cache hit (no upstream call) from a miss

Run: python -m bench.mock_upstream --port 4100
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import orjson
from aiohttp import web

from bench.serving import serve, server_args

ANSWER = "Hello! This is the benchmark's mock upstream answering your request."
STREAM_PIECES = ("Hello! ", "This is the ", "benchmark's mock ", "upstream streaming.")
COMPLETION_TOKENS = 16
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_COUNTS: web.AppKey[dict[str, int]] = web.AppKey("counts", dict)
_IDS = itertools.count(1)


def _prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        chars += len(content) if isinstance(content, str) else 16
    return chars // 4 + 1


def _usage(prompt: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": prompt + COMPLETION_TOKENS}


def completion(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-mock{next(_IDS)}", "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model", "mock"),
        "system_fingerprint": "bench-mock",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": ANSWER},
                     "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(_prompt_tokens(body)),
    }


def _event(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


async def _stream(request: web.Request, body: dict[str, Any]) -> web.StreamResponse:
    base = {"id": f"chatcmpl-mock{next(_IDS)}", "object": "chat.completion.chunk",
            "created": int(time.time()), "model": body.get("model", "mock")}
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": piece} for piece in STREAM_PIECES]
    for delta in deltas:
        await resp.write(_event({**base, "choices": [
            {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]}))
    await resp.write(_event({**base, "choices": [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]}))
    options = body.get("stream_options") or {}
    if isinstance(options, dict) and options.get("include_usage"):
        await resp.write(_event({**base, "choices": [],
                                 "usage": _usage(_prompt_tokens(body))}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def chat(request: web.Request) -> web.StreamResponse:
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return web.json_response({"error": {"message": "invalid JSON", "type": "invalid_request_"
                                            "error", "param": None, "code": None}}, status=400)
    counts = request.app[_COUNTS]
    if body.get("stream"):
        counts["stream"] += 1
        return await _stream(request, body)
    counts["chat"] += 1
    return web.Response(body=orjson.dumps(completion(body)), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def stats(request: web.Request) -> web.Response:
    return web.Response(body=orjson.dumps(request.app[_COUNTS]),
                        content_type="application/json")


def build_app() -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)  # loop_lag sends 4 MB prompts
    app[_COUNTS] = {"chat": 0, "stream": 0}
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    app.router.add_get("/stats", stats)
    return app


def main() -> None:
    args = server_args("mock OpenAI-compatible upstream").parse_args()
    serve(build_app(), args.host, args.port)


if __name__ == "__main__":
    main()
