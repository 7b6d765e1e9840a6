"""A fake OpenAI-compatible upstream that misbehaves on purpose, picked by the model name asked
for (as tensorzero's dummy provider does): answers that never end, streams that drip, calls that
wait at a gate. Real HTTP on loopback; it records how much it wrote before the gateway hung up.

    endless-json    a 200 JSON answer whose body never ends
    endless-sse     a stream of well-formed chunks, as fast as they are read, for ever
    endless-line    one SSE line that never ends (no newline)
    huge-json       a complete answer of `huge_bytes` bytes (its Content-Length declared)
    drip-chunks     one whole chunk every `drip_s`, for ever
    drip-bytes      one whole chunk, then one byte every `drip_s`, never finishing the next
    gated           waits until `gate` is set, then answers normally
    leaky-error     400 whose message quotes the prompt (as some providers do)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.support.scripted import OK_COMPLETION

_BLOCK = 64 * 1024


def chunk(text: str, model: str = "hostile") -> bytes:
    body = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": model,
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}
    return b"data: " + orjson.dumps(body) + b"\n\n"


@dataclass
class HostileUpstream:
    url: str = ""
    drip_s: float = 0.2
    huge_bytes: int = 4 * 1024 * 1024
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    waiting: int = 0                               # requests held at the gate now
    written: dict[str, int] = field(default_factory=dict)
    hung_up: dict[str, asyncio.Event] = field(default_factory=dict)

    def hang_up_seen(self, model: str) -> asyncio.Event:
        return self.hung_up.setdefault(model, asyncio.Event())

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = str(body.get("model"))
        if model == "gated":
            self.waiting += 1
            try:
                await self.gate.wait()
            finally:
                self.waiting -= 1
            return web.json_response(OK_COMPLETION)
        if model == "leaky-error":
            prompt = body["messages"][-1]["content"]
            return web.json_response({"error": {"message": f"Invalid value: {prompt!r}",
                                                "type": "invalid_request_error",
                                                "code": f"invalid_{prompt}"}}, status=400)
        if model == "huge-json":
            filler = "a" * self.huge_bytes
            answer = {**OK_COMPLETION, "choices": [{"index": 0, "finish_reason": "stop",
                      "message": {"role": "assistant", "content": filler}}]}
            return web.json_response(answer)
        stream = model != "endless-json"
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream" if stream else "application/json"})
        await resp.prepare(request)
        try:
            async for piece in self._pieces(model):
                await resp.write(piece)
                self.written[model] = self.written.get(model, 0) + len(piece)
        except (ConnectionError, asyncio.CancelledError):
            self.hang_up_seen(model).set()
            raise
        return resp

    async def _pieces(self, model: str) -> AsyncIterator[bytes]:
        if model == "endless-json":
            yield b'{"id": "x", "object": "chat.completion", "choices": [{"message": {"content": "'
            while True:
                yield b"a" * _BLOCK
        elif model == "endless-sse":
            n = 0
            while True:  # each chunk different: litellm stops a stream that repeats itself
                pieces = [chunk(f"word {i} ") for i in range(n, n + 500)]
                n += 500
                yield b"".join(pieces)
        elif model == "endless-line":
            yield chunk("first")
            yield b"data: "
            while True:
                yield b"a" * _BLOCK
        elif model in ("drip-chunks", "drip-bytes"):
            yield chunk("first words of a long answer ")
            while True:
                await asyncio.sleep(self.drip_s)
                yield chunk("more ") if model == "drip-chunks" else b"d"
        else:
            raise web.HTTPNotFound()


async def start_hostile() -> AsyncIterator[HostileUpstream]:
    hostile = HostileUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", hostile._chat)
    # handler_cancellation: a handler whose client hung up is cancelled at once, so the hang-up
    # is seen even while it sleeps between drips.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hostile.url = f"http://127.0.0.1:{site.port}/v1"
    yield hostile
    hostile.gate.set()
    await runner.cleanup()


def deployment_for(name: str, model: str, url: str, **info: Any) -> dict[str, Any]:
    """A config entry for one hostile behaviour (the upstream model name picks it)."""
    info.setdefault("id", model)
    return {"model_name": name, "litellm_params": {"model": f"openai/{model}", "api_base": url,
                                                   "api_key": "sk-hostile-0000000000"},
            "model_info": info}
