"""The baseline: the least a Python reverse proxy for OpenAI traffic can do.

It parses the request JSON (orjson), sets the upstream model, forwards it over one shared
aiohttp ClientSession, parses the answer JSON and writes it back. Streams are relayed as they
arrive. No auth, no routing, no accounting: whatever Podium spends beyond this is its own.

Run: python -m bench.bare_proxy --port 4101 --upstream http://127.0.0.1:4100/v1
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from bench.serving import serve, server_args

_SESSION: web.AppKey[aiohttp.ClientSession] = web.AppKey("session", aiohttp.ClientSession)
_URL: web.AppKey[str] = web.AppKey("url", str)
_MODEL: web.AppKey[str] = web.AppKey("model", str)
_HEADERS = {"Content-Type": "application/json", "Authorization": "Bearer mock"}


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    body["model"] = request.app[_MODEL]
    session = request.app[_SESSION]
    upstream = await session.post(request.app[_URL], data=orjson.dumps(body), headers=_HEADERS)
    try:
        if body.get("stream") and upstream.status == 200:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            async for piece in upstream.content.iter_any():
                await resp.write(piece)
            await resp.write_eof()
            return resp
        answer = orjson.loads(await upstream.read())
        return web.Response(body=orjson.dumps(answer), status=upstream.status,
                            content_type="application/json")
    finally:
        upstream.release()


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def build_app(upstream: str, model: str) -> web.Application:
    app = web.Application()
    app[_URL] = upstream.rstrip("/") + "/chat/completions"
    app[_MODEL] = model

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256, keepalive_timeout=30)
        app[_SESSION] = aiohttp.ClientSession(connector=connector)
        yield
        await app[_SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    parser = server_args("bare aiohttp reverse proxy (the baseline)")
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. .../v1")
    parser.add_argument("--model", default="mock", help="model name sent upstream")
    args = parser.parse_args()
    serve(build_app(args.upstream, args.model), args.host, args.port)


if __name__ == "__main__":
    main()
