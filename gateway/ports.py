"""The sockets `podium serve` listens on: bound before anything says "serving", and a port that
cannot be had is one line naming it and what moves it, instead of a traceback after a
"serving on :4000" that was never true."""

from __future__ import annotations

import errno
import socket

GATEWAY_PORT_MOVED_BY = "PODIUM_PORT or --port"
SIMULATOR_PORT_MOVED_BY = "PODIUM_SIM_PORT (the default config reads it) or simulator.port"
_BACKLOG = 1024


class CannotListen(Exception):
    """A port that cannot be listened on, said in one line for the operator."""

    def __init__(self, what: str, host: str, port: int, err: OSError, moved_by: str) -> None:
        why = ("the port is in use" if err.errno == errno.EADDRINUSE
               else err.strerror or str(err))
        super().__init__(f"{what} cannot listen on {host}:{port}: {why}; "
                         f"set {moved_by} to use another port")
        self.port = port


def listening_socket(host: str, port: int, *, reuse_port: bool = False,
                     what: str = "the gateway", moved_by: str = GATEWAY_PORT_MOVED_BY,
                     listen: bool = True) -> socket.socket:
    """A TCP socket bound to host:port (listening unless `listen` is false), as aiohttp would
    make it: SO_REUSEADDR, and SO_REUSEPORT for a worker of a pool."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except OSError as err:
        raise CannotListen(what, host, port, err, moved_by) from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(_BACKLOG)
    except OSError as err:
        sock.close()
        raise CannotListen(what, host, port, err, moved_by) from None
    return sock


def ensure_free(host: str, port: int, *, what: str, moved_by: str) -> None:
    """Fail now, with one line, if host:port is taken (by anyone: no SO_REUSEPORT here, so
    another pool's workers count too). A port of 0 means any free port: nothing to check."""
    if port:
        listening_socket(host, port, what=what, moved_by=moved_by, listen=False).close()
