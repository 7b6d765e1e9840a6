"""Reading an upstream's answer off the wire: never more than the deployment's
`max_response_bytes`, and server-sent events split incrementally.

A broken or hostile upstream can send an endless body or an endless line; without a bound
one such answer took the process to 1.1 GB and held its loop for 13 s.
"""

from __future__ import annotations

import aiohttp

from gateway.errors import ProviderError
from routing.providers.base import Attempt


def too_large(limit: int) -> ProviderError:
    return ProviderError("server", f"the upstream's answer exceeds the {limit}-byte limit "
                                   f"(server.max_response_bytes)")


class ByteBudget:
    """What is left of `max_response_bytes` for one answer: past it the attempt fails (and
    falls back) before the answer can fill the process's memory or hold its loop."""

    __slots__ = ("_left", "_limit")

    def __init__(self, attempt: Attempt) -> None:
        self._limit = self._left = attempt.deployment.max_response_bytes

    def spend(self, size: int) -> None:
        self._left -= size
        if self._left < 0:
            raise too_large(self._limit)


async def read_capped(resp: aiohttp.ClientResponse, attempt: Attempt) -> bytes:
    """The whole body, read piece by piece up to the limit; a declared length past it fails
    before anything is read."""
    limit = attempt.deployment.max_response_bytes
    if resp.content_length is not None and resp.content_length > limit:
        raise too_large(limit)
    budget, pieces = ByteBudget(attempt), []
    async for piece in resp.content.iter_any():
        budget.spend(len(piece))
        pieces.append(piece)
    return b"".join(pieces)


class EventSplitter:
    """Incremental server-sent events: bytes as they arrive in, each event's `data` out.

    Lines may end in \\n or \\r\\n and arrive split across reads; comments (`:`) and the other
    fields (`event:`, `id:`, `retry:`) are ignored; a blank line ends an event. A line still
    arriving is kept as its pieces and joined once, when it ends: re-joining it on every read
    would cost time quadratic in its length."""

    __slots__ = ("_data", "_tail")

    def __init__(self) -> None:
        self._tail: list[bytes] = []
        self._data: list[bytes] = []

    def feed(self, piece: bytes) -> list[bytes]:
        if b"\n" not in piece:
            if piece:
                self._tail.append(piece)
            return []
        if self._tail:
            self._tail.append(piece)
            piece, self._tail = b"".join(self._tail), []
        lines = piece.split(b"\n")
        last = lines.pop()
        if last:
            self._tail.append(last)
        events: list[bytes] = []
        for line in lines:
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:
                if self._data:
                    events.append(b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                self._data.append(line[6:] if line[5:6] == b" " else line[5:])
        return events

    def end(self) -> list[bytes]:
        return self.feed(b"\n\n") if self._tail or self._data else []
