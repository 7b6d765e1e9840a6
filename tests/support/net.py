"""Loopback ports and small HTTP reads."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp


def free_port() -> int:
    """A loopback port nothing listens on right now: to start a server on, or to be refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def get_json(url: str) -> Any:
    """The JSON of a 200 answer; None for any other status or when nothing answers (yet)."""
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            return await resp.json() if resp.status == 200 else None
    except aiohttp.ClientError:
        return None
