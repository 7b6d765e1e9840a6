"""Waiting for a real condition instead of sleeping for a guessed time.

The ceiling is generous on purpose: on a loaded 2-core machine a worker pool or a tool can take
far longer to come up than on a quiet one, and a test must fail because something is broken,
not because the machine is busy. A condition that holds returns at once whatever the ceiling.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

CEILING_S = 120.0
_POLL_S = 0.05


async def until(condition: Callable[[], Awaitable[Any]], what: str,
                timeout_s: float = CEILING_S) -> Any:
    """The condition's first truthy result, polled; AssertionError after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        result = await condition()
        if result:
            return result
        await asyncio.sleep(_POLL_S)
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")


def until_sync(condition: Callable[[], Any], what: str, timeout_s: float = CEILING_S,
               poll_s: float = 0.2) -> Any:
    """`until` for code outside the event loop (a process being started, a file appearing)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(poll_s)  # the poll interval, not a guess at how long the wait takes
    raise AssertionError(f"timed out after {timeout_s:g}s waiting for {what}")
