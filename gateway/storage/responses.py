"""Stored Responses API answers in SQLite (the embedded default), and the sweep that removes
expired ones on every backend.

Each row is one response, its owner's key id, its expiry, and the whole conversation up to it
(see `StoredResponse`). Reads and deletes go by primary key and check owner and expiry in the
same statement, so another key's or an expired response is simply not found. Expired rows are
removed by `sweep`, a loop off the request path that deletes by the expiry index.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.storage.contracts import ResponseStore
from gateway.storage.records import StoredResponse
from gateway.storage.sqlite import SqliteFile, sqlite_connect

log = logging.getLogger("podium.responses")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created_at REAL NOT NULL,
    expires_at REAL NOT NULL, response TEXT NOT NULL, items TEXT NOT NULL
)"""
_INDEX = "CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at)"
_COLUMNS = ", ".join(StoredResponse.COLUMNS)


class ResponseLog(SqliteFile):
    """`ResponseStore` in the SQLite file of the other durable stores (`storage.path`)."""

    schema, what = _SCHEMA, "response store"

    async def start(self) -> None:
        db = sqlite_connect(self._path, _SCHEMA)
        db.execute(_INDEX)
        # WAL with NORMAL survives a crash of the process (not of the machine) without an
        # fsync per commit: one small write per response on the loop, like the review queue.
        db.execute("PRAGMA synchronous=NORMAL")
        self._db = db

    async def put(self, stored: StoredResponse) -> None:
        placeholders = ", ".join("?" * len(StoredResponse.COLUMNS))
        self._conn().execute(f"INSERT INTO responses ({_COLUMNS}) VALUES ({placeholders})",
                             stored.row())

    async def get(self, response_id: str, key_id: str) -> StoredResponse | None:
        row = self._conn().execute(
            f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND key_id = ? AND expires_at > ?",
            (response_id, key_id, time.time())).fetchone()
        return StoredResponse.from_row(row) if row else None

    async def delete(self, response_id: str, key_id: str) -> bool:
        cur = self._conn().execute(
            "DELETE FROM responses WHERE id = ? AND key_id = ? AND expires_at > ?",
            (response_id, key_id, time.time()))
        return cur.rowcount == 1

    async def purge(self, now: float) -> int:
        return self._conn().execute("DELETE FROM responses WHERE expires_at <= ?",
                                    (now,)).rowcount



async def sweep(store: ResponseStore, interval_s: float) -> None:
    """Purge expired responses every `interval_s`, until cancelled (at shutdown). Reads never
    depend on it: an expired response is refused by `get` whether or not it was swept."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            removed = await store.purge(time.time())
        except Exception:  # a failed sweep is retried at the next interval; nothing is lost
            log.exception("purging expired responses failed; will retry")
            continue
        if removed:
            log.info("purged %d expired responses", removed)
