"""`podium serve` with cProfile switched by signals, so start-up and warm-up stay out of the
profile: SIGUSR1 starts profiling the event-loop thread, SIGUSR2 stops and writes the stats.

Run: python -m bench.profiled_serve --out podium.prof [--patch NAMES] serve --config ...
(`--patch` applies `bench.whatif` patches first.)
"""

from __future__ import annotations

import cProfile
import signal
import sys
from types import FrameType


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] != "--out":
        raise SystemExit("usage: python -m bench.profiled_serve --out FILE serve [podium args]")
    out, argv = sys.argv[2], sys.argv[3:]
    if argv[:1] == ["--patch"]:
        from bench.whatif import PATCHES

        for name in filter(None, argv[1].split(",")):
            PATCHES[name]()
        argv = argv[2:]
    profile = cProfile.Profile()

    def start(signum: int, frame: FrameType | None) -> None:
        profile.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        profile.disable()
        profile.dump_stats(out)

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    from gateway.cli import main as podium

    return podium(argv)


if __name__ == "__main__":
    sys.exit(main())
