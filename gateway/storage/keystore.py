"""Virtual keys created through the admin API, in SQLite.

Only a key's sha256 digest is stored; the raw key is returned once, at creation. Lookups are
served from memory; the map is reloaded when SQLite's `data_version` says another connection
(another worker process, an operator's tool) changed the file, so a revocation anywhere takes
effect on the next request everywhere.
"""

from __future__ import annotations

import sqlite3
import time

from gateway.pipeline.identity import DigestIndex
from gateway.storage.records import StoredKey
from gateway.storage.sqlite import SqliteFile, sqlite_connect
from plugins.settings import Limits

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    id TEXT PRIMARY KEY,
    digest TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    team TEXT,
    user TEXT,
    models TEXT,
    created_at REAL NOT NULL,
    revoked_at REAL,
    limits TEXT
)"""
# Added after the first release: a store created before it gets the column at start-up.
_MIGRATIONS = (("limits", "ALTER TABLE keys ADD COLUMN limits TEXT"),)
# In the order of `StoredKey.row` and `StoredKey.from_row`.
_COLUMNS = "id, digest, name, team, user, models, created_at, revoked_at, limits"


class KeyStore(SqliteFile):
    schema, what = _SCHEMA, "key store"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._version = -1
        self._index = DigestIndex()

    async def start(self) -> None:
        self._db = sqlite_connect(self._path, _SCHEMA)
        have = {row[1] for row in self._db.execute("PRAGMA table_info(keys)")}
        for column, ddl in _MIGRATIONS:
            if column not in have:
                try:
                    self._db.execute(ddl)
                except sqlite3.OperationalError as exc:  # another worker added it first
                    if "duplicate column" not in str(exc):
                        raise
        self._reload()

    async def find(self, digest: str) -> StoredKey | None:
        if self._db is None:
            return None
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._reload()
        found = self._index.find(digest)
        return found if isinstance(found, StoredKey) else None

    async def create(self, name: str, team: str | None, user: str | None,
                     models: list[str] | None,
                     limits: Limits | None = None) -> tuple[StoredKey, str]:
        key, raw, digest = StoredKey.new(name, team, user, models, limits)
        self._conn().execute(f"INSERT INTO keys ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             key.row(digest))
        self._reload()
        return key, raw

    async def list(self) -> list[StoredKey]:
        rows = self._conn().execute(
            f"SELECT {_COLUMNS} FROM keys ORDER BY created_at").fetchall()
        return [StoredKey.from_row(r) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        cur = self._conn().execute(
            "UPDATE keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            (time.time(), key_id))
        self._reload()
        return cur.rowcount == 1


    def _reload(self) -> None:
        db = self._conn()
        rows = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE revoked_at IS NULL").fetchall()
        self._index = DigestIndex((r[1], StoredKey.from_row(r)) for r in rows)
        self._version = db.execute("PRAGMA data_version").fetchone()[0]
