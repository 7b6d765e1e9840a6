"""Model management's stores in PostgreSQL: the config version history and the shadow trials'
comparisons. They behave exactly like the SQLite ones (`config_versions.py`,
`shadow_pairs.py`) and pass the same contract suite.

Numbering versions is atomic across every process and machine on the database: `record` takes a
transaction-scoped advisory lock, reads the latest version and inserts the next one.
"""

from __future__ import annotations

from typing import Any

from gateway.storage.postgres import BatchedStore, _PgStore
from gateway.storage.records import ConfigVersion, ShadowPair
from gateway.storage.shadow_pairs import REPORT_SQL, SCHEMA, report_rows

_VERSIONS_LOCK = 0x706F_6469_756D_0002    # "podium" + 2: one version is numbered at a time
_VERSIONS_DDL = """
CREATE TABLE IF NOT EXISTS podium_config_versions (
    number BIGINT PRIMARY KEY, digest TEXT NOT NULL, loaded_at DOUBLE PRECISION NOT NULL,
    loaded_by TEXT NOT NULL, action TEXT NOT NULL, source TEXT NOT NULL, content TEXT NOT NULL,
    restorable INTEGER NOT NULL, rollback_of BIGINT);
"""
_VERSION_COLUMNS = ", ".join(ConfigVersion.COLUMNS)
_VERSION_SELECT = f"SELECT {_VERSION_COLUMNS} FROM podium_config_versions"
_PAIR_COLUMNS = ", ".join(ShadowPair.COLUMNS)


class PgConfigVersions(_PgStore):
    _ddl, _what = _VERSIONS_DDL, "config version store"

    async def record(self, draft: ConfigVersion) -> ConfigVersion:
        async with self._db().acquire() as conn, conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_VERSIONS_LOCK})")
            row = await conn.fetchrow(_VERSION_SELECT + " ORDER BY number DESC LIMIT 1")
            latest = ConfigVersion.from_row(tuple(row)) if row else None
            if latest is not None and latest.digest == draft.digest:
                return latest
            version = draft.numbered(latest.number + 1 if latest is not None else 1)
            marks = ", ".join(f"${i}" for i in range(1, len(ConfigVersion.COLUMNS) + 1))
            await conn.execute(f"INSERT INTO podium_config_versions ({_VERSION_COLUMNS}) "
                               f"VALUES ({marks})", *version.row())
            return version

    async def latest(self) -> ConfigVersion | None:
        row = await self._db().fetchrow(_VERSION_SELECT + " ORDER BY number DESC LIMIT 1")
        return ConfigVersion.from_row(tuple(row)) if row else None

    async def get(self, number: int) -> ConfigVersion | None:
        row = await self._db().fetchrow(_VERSION_SELECT + " WHERE number = $1", number)
        return ConfigVersion.from_row(tuple(row)) if row else None

    async def history(self, limit: int = 100) -> list[ConfigVersion]:
        rows = await self._db().fetch(_VERSION_SELECT + " ORDER BY number DESC LIMIT $1", limit)
        return [ConfigVersion.from_row(tuple(r)) for r in rows]


class PgShadowPairs(BatchedStore):
    _ddl = SCHEMA.format(t="podium_", real="DOUBLE PRECISION")
    _what, _name = "shadow comparisons", "shadow"

    def submit(self, pair: ShadowPair) -> None:
        self._writer.submit(pair)

    async def _write(self, batch: list[ShadowPair]) -> None:
        marks = ", ".join(f"${i}" for i in range(1, len(ShadowPair.COLUMNS) + 1))
        async with self._db().acquire() as conn, conn.transaction():
            await conn.executemany(f"INSERT INTO podium_shadow_pairs ({_PAIR_COLUMNS}) "
                                   f"VALUES ({marks})", [p.row() for p in batch])

    async def pairs(self, rule: str | None, since: float | None,
                    limit: int = 10_000) -> list[ShadowPair]:
        await self.flush()
        rows = await self._db().fetch(
            f"SELECT {_PAIR_COLUMNS} FROM podium_shadow_pairs WHERE ts >= $1 AND "
            f"($2::text IS NULL OR rule = $2) ORDER BY ts DESC LIMIT $3",
            since or 0.0, rule, limit)
        return [ShadowPair.from_row(tuple(r)) for r in rows]

    async def report(self, rule: str | None, since: float | None) -> list[dict[str, Any]]:
        await self.flush()
        sql = REPORT_SQL.format(t="podium_", since="$1", rule="$2::text")
        return report_rows([tuple(r) for r in await self._db().fetch(sql, since or 0.0, rule)])
