"""The answer journal: what makes an answered request's audit record and spend row survive a
`kill -9`.

Answers are sent before the request's accounting runs (so clients never wait for it), and the
audit trail and spend ledger are written in batches; a process killed in between used to lose
those records (94 of 190 answered requests under load). Now, right before an answer leaves, a
compact line (who, what, how many tokens, what it cost) is appended to this process's journal
file with one `write(2)`: once the call returns, the line is in the kernel's page cache and
outlives the process (not a power loss: that would need an fsync per answer). Lines are
retired once their records are written; on start-up, journals left by dead processes (each
live process holds an exclusive lock on its own) are replayed: every answered request the audit
trail or the ledger lacks is written, marked `recovered`, and the file removed.

Files rotate every `ROTATE_S` seconds: a new file takes new lines, and the old one is removed
once every request in it was accounted for and the stores flushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from gateway.storage.contracts import AuditStore, SpendStore
from gateway.storage.records import AuditRecord, SpendRow

log = logging.getLogger("podium.journal")
ROTATE_S = 10.0


@dataclass
class _File:
    path: Path
    fd: int
    pending: set[str] = field(default_factory=set)   # answered, not yet accounted for


class Journal:
    def __init__(self, directory: Path) -> None:
        self._dir = directory
        self._current: _File | None = None
        self._retiring: list[_File] = []
        self._where: dict[str, _File] = {}

    def open(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        self._current = self._new_file()

    def _new_file(self) -> _File:
        path = self._dir / f"journal-{os.getpid()}-{time.time_ns()}.jsonl"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)  # held for life: a replayer skips live files
        return _File(path, fd)

    def answered(self, entry: dict[str, Any]) -> None:
        """Append one answered request's compact record, before its answer leaves."""
        current = self._current
        if current is None:
            return
        os.write(current.fd, orjson.dumps(entry) + b"\n")
        current.pending.add(entry["request_id"])
        self._where[entry["request_id"]] = current

    def accounted(self, request_id: str) -> None:
        """The request's records were handed to the stores: its line may be retired."""
        found = self._where.pop(request_id, None)
        if found is not None:
            found.pending.discard(request_id)

    async def rotate(self, audit: AuditStore | None, ledger: SpendStore) -> None:
        """Start a new file; remove the old ones whose requests are all accounted for, once
        the stores have written what they were given."""
        if self._current is not None:
            self._retiring.append(self._current)
            self._current = self._new_file()
        done = [f for f in self._retiring if not f.pending]
        if not done:
            return
        if audit is not None:
            await audit.flush()
        await ledger.flush()
        for old in done:
            self._retiring.remove(old)
            _remove(old)

    async def close(self, audit: AuditStore | None, ledger: SpendStore) -> None:
        """At shutdown, after the stores were flushed: nothing is left to replay."""
        for old in [*self._retiring, *([self._current] if self._current else [])]:
            if not old.pending:
                _remove(old)
            else:
                os.close(old.fd)  # kept for the next start to replay
        self._current, self._retiring = None, []


def _remove(file: _File) -> None:
    os.close(file.fd)
    with contextlib.suppress(FileNotFoundError):
        file.path.unlink()


async def recover(directory: Path, audit: AuditStore | None, ledger: SpendStore) -> int:
    """Replay the journals of dead processes; the number of records written back. Each is
    replayed under its lock, so two workers starting together never replay one twice."""
    restored = 0
    for path, fd, entries in _orphans(directory):
        try:
            restored += await _replay(entries, audit, ledger)
            if audit is not None:
                await audit.flush()
            await ledger.flush()
            path.unlink(missing_ok=True)
        finally:
            os.close(fd)
    if restored:
        log.warning("recovered %d answered request record(s) from journals of processes "
                    "that stopped without accounting for them", restored)
    return restored


def _orphans(directory: Path) -> Iterator[tuple[Path, int, list[dict[str, Any]]]]:
    """The journals no live process holds, each locked by us, with its entries."""
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("journal-*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # replayed by another worker meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # a live process's
        yield path, fd, list(_entries(path.read_bytes()))


def _entries(raw: bytes) -> Iterator[dict[str, Any]]:
    for line in raw.splitlines():
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue  # a line cut by the kill
        if isinstance(entry, dict) and isinstance(entry.get("request_id"), str):
            yield entry


async def _replay(entries: list[dict[str, Any]], audit: AuditStore | None,
                  ledger: SpendStore) -> int:
    restored = 0
    for e in entries:
        if audit is not None and not await audit.has(e["request_id"]):
            audit.submit(AuditRecord(time=e["time"], request_id=e["request_id"],
                                     key_id=e["key_id"], team=e["team"], status=e["status"],
                                     details={k: v for k, v in e.items() if k not in (
                                         "time", "request_id", "key_id", "team", "status")}
                                     | {"event": "request", "recovered": True}))
            restored += 1
        if not await ledger.has(e["request_id"]):
            ledger.submit(SpendRow(
                ts=e["time"], request_id=e["request_id"], key_id=e["key_id"],
                key_name=str(e.get("key_name") or ""), team=e["team"], model=e.get("model") or "",
                deployment=e.get("deployment"), status=e["status"],
                prompt_tokens=int(e.get("prompt_tokens") or 0),
                completion_tokens=int(e.get("completion_tokens") or 0),
                cost_usd=float(e.get("cost_usd") or 0.0)))
            restored += audit is None
    return restored
