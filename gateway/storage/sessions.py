"""Dashboard sessions in SQLite, in the key store's file (`key_store.path`): the workers of one
machine share them, as they share keys. The PostgreSQL twin is `postgres_sessions.py`."""

from __future__ import annotations

import time

from gateway.storage.records import DashboardSession
from gateway.storage.sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dashboard_sessions (
    digest TEXT PRIMARY KEY,
    admin TEXT NOT NULL,
    key_fingerprint TEXT NOT NULL,
    expires_at REAL NOT NULL
)"""


class SqliteSessions(SqliteFile):
    schema, what = _SCHEMA, "session store"

    async def open(self, digest: str, session: DashboardSession) -> None:
        db = self._conn()
        db.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (time.time(),))
        db.execute("INSERT INTO dashboard_sessions VALUES (?, ?, ?, ?)",
                   (digest, session.admin, session.key_fingerprint, session.expires_at))

    async def find(self, digest: str) -> DashboardSession | None:
        row = self._conn().execute(
            "SELECT admin, key_fingerprint, expires_at FROM dashboard_sessions "
            "WHERE digest = ? AND expires_at > ?", (digest, time.time())).fetchone()
        return DashboardSession(*row) if row is not None else None

    async def end(self, digest: str) -> bool:
        cur = self._conn().execute("DELETE FROM dashboard_sessions WHERE digest = ?", (digest,))
        return cur.rowcount == 1

