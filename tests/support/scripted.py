"""A fake OpenAI-compatible upstream whose next answers the test scripts: any JSON body (or raw
bytes) for plain calls, any list of SSE `data:` payloads for streams. Real HTTP on loopback, so
the gateway's real provider code reads what a broken or hostile server would send."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

OK_COMPLETION: dict[str, Any] = {
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "scripted",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "fine"},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
}


@dataclass
class ScriptedUpstream:
    url: str = ""
    answer: Any = field(default_factory=lambda: OK_COMPLETION)
    status: int = 200
    stream: list[bytes] | None = None     # SSE data payloads for a streamed request
    calls: int = 0
    bodies: list[Any] = field(default_factory=list)
    chunk_delay_s: float = 0.0            # a slow model: the pause before each streamed chunk

    def heal(self) -> None:
        self.answer, self.status, self.stream = OK_COMPLETION, 200, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        body = await request.json()
        self.bodies.append(body)
        if body.get("stream") and self.stream is not None:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for data in self.stream:
                if self.chunk_delay_s:
                    await asyncio.sleep(self.chunk_delay_s)  # the model's pace, not a wait
                await resp.write(b"data: " + data + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
            return resp
        raw = self.answer if isinstance(self.answer, bytes) else orjson.dumps(self.answer)
        return web.Response(body=raw, status=self.status, content_type="application/json")


async def start_scripted() -> AsyncIterator[ScriptedUpstream]:
    scripted = ScriptedUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", scripted._chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    scripted.url = f"http://127.0.0.1:{port}/v1"
    yield scripted
    await runner.cleanup()
