"""`podium serve` with experimental patches applied in-process, to measure what a product
change would buy before anyone makes it. Nothing here changes Podium's files.

Patches (comma-separated after --patch):
    ratelimit       the in-process rate-limit windows (storage/memory_state.py MemoryState) keep a
                    running total and an index by request id instead of scanning the whole
                    60 s log on every admit and settle (O(1) instead of O(requests in window));
                    the product adopted the same design during the first benchmark session
    requestid       request ids from random.getrandbits instead of uuid4 (no os.urandom call,
                    which releases the GIL and so waits behind the span exporter thread)
    switchinterval  sys.setswitchinterval(0.0005): a thread waiting for the GIL (the event
                    loop, behind the span exporter) waits at most 0.5 ms instead of 5 ms
    gc              gc.freeze() after imports and a 20x higher young-generation threshold
    sample10        OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1 (10 % of traces)

Run: python -m bench.whatif --patch ratelimit,requestid serve --config ... --port ...
"""

from __future__ import annotations

import random
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn
    return register


@patch("ratelimit")
def _running_totals() -> None:
    """MemoryState keeps, per window, a running total and an index by request id, so admitting
    and settling stop scanning the whole 60 s log; the exact scan runs only when over a limit."""
    from gateway.storage import memory_state as state
    from gateway.storage.memory_state import WINDOW_S, MemoryState, WindowCheck

    entry_type = state._Entry

    Extras = tuple[dict[str, float], dict[str, dict[str, Any]], dict[str, deque[Any]]]

    def extras(self: MemoryState) -> Extras:
        """(totals, entries by request id, logs) per window key, kept beside the product's own
        `_windows` so that nothing else in MemoryState sees a different type there."""
        found: Extras | None = self.__dict__.get("_bench_extras")
        if found is None:
            found = self.__dict__["_bench_extras"] = ({}, {}, {})
        return found

    def window(self: MemoryState, key: str) -> deque[Any]:
        totals, index, logs = extras(self)
        log = logs.setdefault(key, deque())
        horizon = self.clock() - WINDOW_S
        while log and log[0].at <= horizon:
            gone = log.popleft()
            totals[key] = totals.get(key, 0.0) - gone.amount
            index.get(key, {}).pop(gone.request_id, None)
        return log

    def wait(self: MemoryState, check: WindowCheck) -> float:
        window(self, check.key)
        if extras(self)[0].get(check.key, 0.0) + check.amount <= check.limit:
            return 0.0
        log = extras(self)[2][check.key]  # the exact wait, over the bench's own log
        used, freed, now = extras(self)[0].get(check.key, 0.0), 0.0, self.clock()
        for e in log:
            freed += e.amount
            if used - freed + check.amount <= check.limit:
                return max(0.001, float(e.at) + WINDOW_S - now)
        return WINDOW_S

    async def admit(self: MemoryState, checks: list[WindowCheck],
                    request_id: str) -> tuple[float, str | None]:
        longest, full = max(((wait(self, c), c.key) for c in checks), default=(0.0, None))
        if longest > 0:
            return longest, full
        now, (totals, index, _) = self.clock(), extras(self)
        for c in checks:
            entry = entry_type(now, c.amount, request_id)
            window(self, c.key).append(entry)
            totals[c.key] = totals.get(c.key, 0.0) + c.amount
            index.setdefault(c.key, {})[request_id] = entry
        return 0.0, None

    async def settle_windows(self: MemoryState, keys: list[str], request_id: str,
                             amount: float) -> None:
        totals, index, _ = extras(self)
        for key in keys:
            entry = index.get(key, {}).get(request_id)
            if entry is not None:
                totals[key] = totals.get(key, 0.0) + amount - entry.amount
                entry.amount = amount

    MemoryState.admit = admit  # type: ignore[method-assign]
    MemoryState.settle_windows = settle_windows  # type: ignore[method-assign]


@patch("requestid")
def _cheap_request_ids() -> None:
    from gateway.http import middleware

    middleware.new_request_id = lambda: f"req_{random.getrandbits(128):032x}"


@patch("switchinterval")
def _short_switch_interval() -> None:
    sys.setswitchinterval(0.0005)


@patch("gc")
def _quiet_gc() -> None:
    """Objects from start-up frozen out of the collector, and young collections 20x rarer
    (spans and requests allocate many short-lived objects)."""
    import gc

    gc.collect()
    gc.freeze()
    gc.set_threshold(14_000, 20, 20)


@patch("sample10")
def _sample_ten_percent() -> None:
    """Record 10 % of traces (the standard OTEL_TRACES_SAMPLER variables, which Podium honours)."""
    import os

    os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
    os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0.1"


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "--patch":
        raise SystemExit("usage: python -m bench.whatif --patch NAME[,NAME] serve [args]")
    names = [n for n in sys.argv[2].split(",") if n]
    unknown = [n for n in names if n not in PATCHES]
    if unknown:
        raise SystemExit(f"unknown patch(es) {unknown}; known: {sorted(PATCHES)}")
    for name in names:
        PATCHES[name]()
    from gateway.cli import main as podium

    return podium(sys.argv[3:])


if __name__ == "__main__":
    sys.exit(main())
