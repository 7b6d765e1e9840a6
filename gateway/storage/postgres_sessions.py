"""Dashboard sessions in PostgreSQL (`storage.backend: postgres`): every worker and machine on
the database accepts a session any of them opened, and a logout anywhere ends it everywhere.
Behaves as `sessions.py` does (both pass tests/test_store_contract.py)."""

from __future__ import annotations

import time

from gateway.storage.postgres import _PgStore  # the pool and schema handling of every PG store
from gateway.storage.records import DashboardSession

_DDL = """
CREATE TABLE IF NOT EXISTS podium_dashboard_sessions (
    digest TEXT PRIMARY KEY, admin TEXT NOT NULL, key_fingerprint TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL);
"""


class PgSessions(_PgStore):
    _ddl, _what = _DDL, "session store"

    async def open(self, digest: str, session: DashboardSession) -> None:
        db = self._db()
        await db.execute("DELETE FROM podium_dashboard_sessions WHERE expires_at <= $1",
                         time.time())
        await db.execute("INSERT INTO podium_dashboard_sessions VALUES ($1, $2, $3, $4)",
                         digest, session.admin, session.key_fingerprint, session.expires_at)

    async def find(self, digest: str) -> DashboardSession | None:
        row = await self._db().fetchrow(
            "SELECT admin, key_fingerprint, expires_at FROM podium_dashboard_sessions "
            "WHERE digest = $1 AND expires_at > $2", digest, time.time())
        return DashboardSession(*row) if row is not None else None

    async def end(self, digest: str) -> bool:
        status = await self._db().execute(
            "DELETE FROM podium_dashboard_sessions WHERE digest = $1", digest)
        return bool(status == "DELETE 1")
