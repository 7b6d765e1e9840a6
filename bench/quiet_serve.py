"""`podium serve` for the instruction-count bench: the dashboard's history sampler (a point
every 5 s: the whole Prometheus exposition rendered and parsed again, tens of millions of
instructions at a time) does not start, and nothing else changes. It is background work whose
count in a measured block depends on how many 5-s ticks the block spans, not on the requests:
a block of 200 requests under callgrind lasts 5-30 s, so one tick more or less would move a
request's count by several percent. Its cost per sample is a row of the per-hop table.

Run: python -m bench.quiet_serve serve --config ... (the `podium` command's arguments)
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any


def quiet() -> str:
    """Take the sampler out; what was done, for the log (a refactor may have moved it)."""
    try:
        from gateway.http import dashboard
    except ImportError as err:
        return f"not patched: {err}"
    if not hasattr(dashboard, "history_ctx"):
        return "not patched: gateway.http.dashboard.history_ctx is gone"

    async def no_history(app: Any) -> AsyncIterator[None]:
        yield

    dashboard.history_ctx = no_history
    return "patched: the dashboard history sampler does not run"


def main() -> int:
    print(f"bench.quiet_serve: {quiet()}", file=sys.stderr, flush=True)
    from gateway.cli import main as podium

    return podium(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
