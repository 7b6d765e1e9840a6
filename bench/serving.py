"""Shared plumbing for the bench's own small servers (mock upstream, bare proxy, OTLP
receiver): one uvloop event loop, an aiohttp app, loopback only, no access log."""

from __future__ import annotations

import argparse
import asyncio
import signal

from aiohttp import web

LOOPBACK = "127.0.0.1"


def loopback_host(host: str) -> str:
    """The bench only ever listens on, and sends to, the loopback range."""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SystemExit(f"refusing to use non-loopback address {host!r}")
    return host


def server_args(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, required=True)
    return parser


def serve(app: web.Application, host: str, port: int) -> None:
    """Run `app` on uvloop until SIGTERM or SIGINT; cleanup hooks run on the way out."""
    import uvloop

    async def main() -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, loopback_host(host), port, backlog=1024).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    uvloop.run(main())
