"""Reading an upstream's answer off the wire: never more than the deployment's
`max_response_bytes` (server-sent events are split in `http_wire.py`).

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
