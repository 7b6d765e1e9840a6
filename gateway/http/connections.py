"""The connections under the app: a deadline on every request head, the process's file limit,
and the serving loop that `podium serve` runs.

Why a handler subclass: aiohttp bounds only how long a connection may sit idle (its keep-alive
timer, which aiohttp 3.14 also starts when a connection opens). A client that sends half a
request head, or one byte of it every few seconds, holds its connection and a file descriptor
for the whole keep-alive time: 1,100 such connections locked real clients out. Go's
`ReadHeaderTimeout` and hyper's `header_read_timeout` are the model here: a head is due within
`server.header_timeout_s` of the connection opening, or, on a kept-alive connection, of its first
byte; a connection that misses it is closed. The keep-alive time stays long (75 s): a load
balancer that pools connections to the gateway must never find one closed under it. Bodies are
bounded separately, per request (`server.body_timeout_s`, in `middleware.py`).

What this leans on, beyond aiohttp's documented API (re-check on upgrade; aiohttp is pinned,
and `tests/security/test_resource_limits.py` fails if the deadline stops working):
`AppRunner._make_server` (the runner's hook that builds the `Server`), and the handler methods
overridden below (`connection_made`, `data_received`, `finish_response`, `connection_lost`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from gateway.config_server import ServerConfig

log = logging.getLogger("podium")
# Where the hard limit is unlimited, a soft limit the kernel accepts (Linux's default nr_open).
_OPEN_FILES_FALLBACK = 1 << 20


class _HeadDeadlineHandler(web.RequestHandler):
    """aiohttp's connection handler, closing a connection whose request head is late."""

    __slots__ = ("_awaiting_head", "_head_timeout_s", "_head_timer")

    def __init__(self, manager: web.Server, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._awaiting_head = True     # no request in hand: the next bytes begin a head

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the first head is due from the moment the connection opens

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head and self._head_timer is None and data:
            self._arm()  # a later head is due from its first byte
        super().data_received(data)

    def head_received(self) -> None:
        """A whole head has arrived (called by the server's request factory)."""
        self._awaiting_head = False
        self._disarm()

    async def finish_response(self, request: web.BaseRequest, resp: web.StreamResponse,
                              start_time: float | None) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._awaiting_head = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self._head_timeout_s, self._late)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _late(self) -> None:
        self._head_timer = None
        self.force_close()


class _HeadDeadlineServer(web.Server):
    """aiohttp's `Server`, making `_HeadDeadlineHandler`s, and telling each one when a head it
    was waiting for has arrived."""

    def __init__(self, handler: Any, *, request_factory: Callable[..., web.BaseRequest],
                 handler_cancellation: bool, head_timeout_s: float,
                 loop: asyncio.AbstractEventLoop, **kwargs: Any) -> None:
        def on_head(message: Any, payload: Any, protocol: web.RequestHandler, writer: Any,
                    task: Any) -> web.BaseRequest:
            if isinstance(protocol, _HeadDeadlineHandler):
                protocol.head_received()
            return request_factory(message, payload, protocol, writer, task)

        super().__init__(handler, request_factory=on_head, loop=loop,
                         handler_cancellation=handler_cancellation, **kwargs)
        self._handler_args = {"loop": loop, "head_timeout_s": head_timeout_s, **kwargs}

    def __call__(self) -> web.RequestHandler:
        return _HeadDeadlineHandler(self, **self._handler_args)


class GatewayRunner(web.AppRunner):
    """`AppRunner` with the head deadline, the keep-alive and the shutdown time from the config."""

    __slots__ = ("_head_timeout_s",)

    def __init__(self, app: web.Application, server: ServerConfig, **kwargs: Any) -> None:
        super().__init__(app, keepalive_timeout=server.keepalive_timeout_s,
                         shutdown_timeout=server.shutdown_timeout_s, **kwargs)
        self._head_timeout_s = server.header_timeout_s

    async def _make_server(self) -> web.Server:
        built = await super()._make_server()  # starts and freezes the app, as aiohttp does
        kwargs = {k: v for k, v in self._kwargs.items() if k != "handler_cancellation"}
        return _HeadDeadlineServer(
            built.request_handler, request_factory=built.request_factory,
            handler_cancellation=built.handler_cancellation, loop=asyncio.get_running_loop(),
            head_timeout_s=self._head_timeout_s, **kwargs)


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit (Linux often starts
    processes at 1024: a thousand connections would exhaust it); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = _OPEN_FILES_FALLBACK if hard == resource.RLIM_INFINITY else hard
    for target in (wanted, _OPEN_FILES_FALLBACK):
        if target <= soft:
            break
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):  # above what the kernel allows: try the fallback
            continue
    return soft


def run(app: web.Application, server: ServerConfig, sock: socket.socket, *,
        loop: asyncio.AbstractEventLoop, announce: Callable[[str], None]) -> None:
    """Serve `app` on the listening `sock` until SIGINT or SIGTERM, then drain: what
    `web.run_app` does, with the gateway's runner (`run_app` cannot be given one)."""
    main = loop.create_task(_serve(app, server, sock, announce))
    try:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(main)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        main.cancel()
        with contextlib.suppress(asyncio.CancelledError, GracefulExit):
            loop.run_until_complete(main)  # the runner's cleanup: drain, then cleanup_ctx
        left = asyncio.all_tasks(loop)
        for task in left:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def _serve(app: web.Application, server: ServerConfig, sock: socket.socket,
                 announce: Callable[[str], None]) -> None:
    runner = GatewayRunner(app, server, handle_signals=True, access_log=None)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock)
        await site.start()
        announce(f"======== Running on {site.name} ========\n(Press CTRL+C to quit)")
        await asyncio.Event().wait()  # until a signal raises GracefulExit
    finally:
        await runner.cleanup()
