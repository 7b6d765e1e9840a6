"""`/metrics` for a `--workers N` pool: each worker's samples as a snapshot file, merged at scrape.

The supervisor makes a directory and names it in `PODIUM_METRICS_DIR`. Each worker writes its
samples there as `worker-<pid>-<start ns>.json` (orjson; a temp file and `os.replace`, so a
reader sees the old snapshot or the new one, never half of one; the start time in the name
keeps a reused pid from overwriting a dead worker's counts): every `SHARE_S` when they
changed, at shutdown, and on each scrape it answers. A scrape then merges every worker's file
with its own fresh samples (`Samples.merged`), so any worker's `/metrics` covers the pool, at
most `SHARE_S` behind for the other workers.

A dead worker's file is kept, so the pool's counters never go backwards when a worker is
restarted (its replacement starts from zero under a new pid); the supervisor marks the file
dead (`retire`), which drops its values from the "live" gauges.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from gateway.observability.samples import Samples, Snapshot

POOL_ENV = "PODIUM_METRICS_DIR"
SHARE_S = 1.0
log = logging.getLogger("podium.metrics")


class MetricsPool:
    """One worker's side of the shared directory."""

    def __init__(self, directory: Path, pid: int | None = None) -> None:
        self.directory = directory
        self.pid = os.getpid() if pid is None else pid
        self.path = directory / f"worker-{self.pid}-{time.time_ns()}.json"
        self._written = b""

    @classmethod
    def from_env(cls) -> MetricsPool | None:
        directory = os.environ.get(POOL_ENV)
        return cls(Path(directory)) if directory else None

    def share(self, samples: Samples) -> Snapshot:
        """Write this worker's snapshot if it changed since the last write; returns it."""
        snapshot = samples.snapshot()
        data = orjson.dumps({"pid": self.pid, "live": True, "samples": snapshot})
        if data != self._written:
            _write_atomic(self.path, data)
            self._written = data
        return snapshot

    def gathered(self, samples: Samples) -> list[tuple[Snapshot, bool]]:
        """Every worker's snapshot with whether it is alive: this one's fresh (and written,
        so the others' scrapes see it too), the others' as last written."""
        mine = self.share(samples)
        found: list[tuple[Snapshot, bool]] = [(mine, True)]
        for path in sorted(self.directory.glob("worker-*.json")):
            if path != self.path:
                entry = _read(path)
                if entry is not None:
                    found.append((entry["samples"], bool(entry.get("live", True))))
        return found

    async def share_forever(self, samples: Samples) -> None:
        while True:
            await asyncio.sleep(SHARE_S)
            try:
                self.share(samples)
            except OSError as err:  # a full or vanished directory: say so, keep serving
                log.warning("cannot write metrics snapshot %s: %s", self.path, err)


def retire(directory: Path, pid: int) -> None:
    """The supervisor, after worker `pid` died: keep its counts, drop it from live gauges."""
    for path in directory.glob(f"worker-{pid}-*.json"):
        entry = _read(path)
        if entry is not None and entry.get("live", True):
            entry["live"] = False
            _write_atomic(path, orjson.dumps(entry))


def _read(path: Path) -> dict[str, Any] | None:
    try:
        entry: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as err:
        log.warning("ignoring unreadable metrics snapshot %s: %s", path, err)
        return None
    return entry


def _write_atomic(path: Path, data: bytes) -> None:
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temp.write_bytes(data)
    os.replace(temp, path)
