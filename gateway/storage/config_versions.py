"""The history of config versions, in SQLite (`storage.path`; PostgreSQL in
postgres_versions.py). Both pass `tests/test_store_contract.py`.

Numbering is atomic across the processes sharing the file: `record` reads the latest version
and inserts the next one inside one `BEGIN IMMEDIATE` transaction, so N workers that load the
same file at once agree on one number, and two different texts never get the same one.
A version is one small row, written on the loop thread: a reload is rare, and the write is the
commit point of the reload.
"""

from __future__ import annotations

import sqlite3

from gateway.storage.records import ConfigVersion
from gateway.storage.sqlite import SqliteFile

_SCHEMA = """
CREATE TABLE IF NOT EXISTS config_versions (
    number INTEGER PRIMARY KEY, digest TEXT NOT NULL, loaded_at REAL NOT NULL,
    loaded_by TEXT NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL, content TEXT NOT NULL,
    restorable INTEGER NOT NULL, rollback_of INTEGER
)"""
_SELECT = "SELECT " + ", ".join(ConfigVersion.COLUMNS) + " FROM config_versions"


class ConfigVersions(SqliteFile):
    schema, what = _SCHEMA, "config version store"

    async def record(self, draft: ConfigVersion) -> ConfigVersion:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            latest = self._latest(db)
            if latest is not None and latest.digest == draft.digest:
                db.execute("COMMIT")
                return latest
            version = draft.numbered(latest.number + 1 if latest is not None else 1)
            row = version.row()
            db.execute(f"INSERT INTO config_versions VALUES ({','.join('?' * len(row))})", row)
            db.execute("COMMIT")
            return version
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def latest(self) -> ConfigVersion | None:
        return self._latest(self._conn())

    async def get(self, number: int) -> ConfigVersion | None:
        row = self._conn().execute(_SELECT + " WHERE number = ?", (number,)).fetchone()
        return ConfigVersion.from_row(row) if row else None

    async def history(self, limit: int = 100) -> list[ConfigVersion]:
        rows = self._conn().execute(_SELECT + " ORDER BY number DESC LIMIT ?", (limit,))
        return [ConfigVersion.from_row(r) for r in rows]

    @staticmethod
    def _latest(db: sqlite3.Connection) -> ConfigVersion | None:
        row = db.execute(_SELECT + " ORDER BY number DESC LIMIT 1").fetchone()
        return ConfigVersion.from_row(row) if row else None

