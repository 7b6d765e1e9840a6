"""`podium serve` with experimental patches applied in-process, to measure what a product
change would buy before anyone makes it. Nothing here changes Podium's files.

Patches (comma-separated after --patch):
    requestid       request ids from random.getrandbits instead of uuid4 (no os.urandom call,
                    which releases the GIL and so waits behind the span exporter thread)
    switchinterval  sys.setswitchinterval(0.0005): a thread waiting for the GIL (the event
                    loop, behind the span exporter) waits at most 0.5 ms instead of 5 ms
    gc              gc.freeze() after imports and a 20x higher young-generation threshold
    sample10        OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.1 (10 % of traces)

Run: python -m bench.whatif --patch requestid,gc serve --config ... --port ...
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable

PATCHES: dict[str, Callable[[], None]] = {}


def patch(name: str) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        PATCHES[name] = fn
        return fn
    return register


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
