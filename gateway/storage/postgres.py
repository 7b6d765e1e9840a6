"""The durable stores in PostgreSQL (`storage.backend: postgres`), on asyncpg.

They behave exactly like the SQLite stores (`keystore.py`, `sqlite.py`): the same records
(`records.py`), the same audit chain (`audit_chain.py`; the audit trail is in
`postgres_audit.py`); both pass
`tests/test_store_contract.py`. Each store owns one small `asyncpg.Pool`, opened by `start()`
(which also creates its tables, serialized across processes by an advisory lock) and closed by
`close()`. Tables are prefixed `podium_`, so they can share a database; pick a schema through
the DSN, e.g. `postgresql://host/db?options=-csearch_path%3Dpodium`. Needs PostgreSQL 14 or
newer (CREATE OR REPLACE TRIGGER). Times are unix seconds in DOUBLE PRECISION; JSON is TEXT
written by orjson, so it round-trips byte for byte.

Key revocation. `find` answers from an in-memory `DigestIndex`. A statement trigger on
`podium_keys` bumps the one row of `podium_keys_version` in the same transaction as any change to
the keys (create, revoke, or an operator's own SQL). Every `find` reads that row (one round trip
on a pooled connection, a prepared single-row SELECT) and reloads the index when it moved, so a
revocation committed by any process is refused by the very next `find` in every process.
LISTEN/NOTIFY was not chosen: notifications arrive asynchronously, so a `find` just after a
revoke elsewhere could still accept the key, and a dropped listener connection loses them.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from typing import Any, TypeVar

import asyncpg

from gateway.errors import BadRequest
from gateway.pipeline.identity import DigestIndex
from gateway.storage.batch import BatchWriter
from gateway.storage.records import Review, SpendRow, StoredKey, StoredResponse, TaskTotals
from plugins.settings import Limits

T = TypeVar("T")

_DDL_LOCK = 0x706F_6469_756D_0001    # "podium" + 1: one process creates the schema at a time
_POOL_MAX = 4

_KEYS_DDL = """
CREATE TABLE IF NOT EXISTS podium_keys (
    id TEXT PRIMARY KEY, digest TEXT NOT NULL UNIQUE, name TEXT NOT NULL, team TEXT,
    user_name TEXT, models TEXT, created_at DOUBLE PRECISION NOT NULL,
    revoked_at DOUBLE PRECISION);
ALTER TABLE podium_keys ADD COLUMN IF NOT EXISTS limits TEXT;
CREATE TABLE IF NOT EXISTS podium_keys_version (
    one BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one), version BIGINT NOT NULL);
INSERT INTO podium_keys_version VALUES (TRUE, 0) ON CONFLICT DO NOTHING;
CREATE OR REPLACE FUNCTION podium_keys_bump() RETURNS trigger LANGUAGE plpgsql
    SET search_path FROM CURRENT AS $$
    BEGIN UPDATE podium_keys_version SET version = version + 1; RETURN NULL; END $$;
CREATE OR REPLACE TRIGGER podium_keys_changed
    AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON podium_keys
    FOR EACH STATEMENT EXECUTE FUNCTION podium_keys_bump();
"""
# In the order of `StoredKey.row` and `StoredKey.from_row`.
_KEY_COLUMNS = "id, digest, name, team, user_name, models, created_at, revoked_at, limits"

_SPEND_DDL = """
CREATE TABLE IF NOT EXISTS podium_spend (
    ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL, key_id TEXT, key_name TEXT,
    team TEXT, model TEXT, deployment TEXT, status INTEGER, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd DOUBLE PRECISION NOT NULL);
CREATE INDEX IF NOT EXISTS podium_spend_ts ON podium_spend (ts);
CREATE INDEX IF NOT EXISTS podium_spend_request_id ON podium_spend (request_id);
ALTER TABLE podium_spend ADD COLUMN IF NOT EXISTS task TEXT,
    ADD COLUMN IF NOT EXISTS workflow TEXT,
    ADD COLUMN IF NOT EXISTS escalations INTEGER DEFAULT 0,
    ADD COLUMN IF NOT EXISTS held INTEGER DEFAULT 0,
    ADD COLUMN IF NOT EXISTS duration_s DOUBLE PRECISION DEFAULT 0;
CREATE INDEX IF NOT EXISTS podium_spend_task ON podium_spend (task, ts);
"""
_SPEND_WIDTH = len(SpendRow.__dataclass_fields__)
# One row per task (see sqlite.py's); the last-started call's status by array_agg.
_TASKS_SQL = """
SELECT task, MAX(workflow), COUNT(*), SUM((status <> 200 AND held = 0)::int),
       SUM(escalations), SUM(held),
       SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), MIN(ts),
       MAX(ts + duration_s),
       (array_agg(CASE WHEN held = 1 THEN 200 ELSE status END ORDER BY ts DESC))[1]
FROM podium_spend WHERE task IS NOT NULL AND ts >= $1 AND ts < $2
GROUP BY task ORDER BY MIN(ts) DESC LIMIT $3"""
_SPEND_GROUPS = {"key": "key_id", "team": "team", "model": "model", "deployment": "deployment",
                 "day": "to_char(to_timestamp(ts) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"}
_SPEND_COLUMNS = {"key_id": "key_id", "team": "team"}

_REVIEWS_DDL = """
CREATE TABLE IF NOT EXISTS podium_reviews (
    id TEXT PRIMARY KEY, created_at DOUBLE PRECISION NOT NULL, status TEXT NOT NULL, rule TEXT,
    request_id TEXT, key_id TEXT, team TEXT, model TEXT, data_class TEXT,
    request TEXT NOT NULL, answer TEXT NOT NULL,
    reviewer TEXT, comment TEXT, decided_at DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS podium_reviews_status ON podium_reviews (status, created_at);
"""
_REVIEW_SELECT = ", ".join(Review.COLUMNS)

_RESPONSES_DDL = """
CREATE TABLE IF NOT EXISTS podium_responses (
    id TEXT PRIMARY KEY, key_id TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL, response TEXT NOT NULL, items TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS podium_responses_expiry ON podium_responses (expires_at);
"""
_RESPONSE_SELECT = ", ".join(StoredResponse.COLUMNS)


class _PgStore:
    """One pool per store; the schema is created on start."""

    _ddl = ""
    _what = "store"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=_POOL_MAX)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_DDL_LOCK})")
                await conn.execute(self._ddl)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _db(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError(f"the {self._what} is not open")
        return self._pool


class PgKeyStore(_PgStore):
    _ddl, _what = _KEYS_DDL, "key store"

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self._version: int | None = -1
        self._index = DigestIndex()
        self._reloading = asyncio.Lock()

    async def start(self) -> None:
        await super().start()
        await self._reload()

    async def find(self, digest: str) -> StoredKey | None:
        if self._pool is None:
            return None
        version = await self._pool.fetchval("SELECT version FROM podium_keys_version")
        if version != self._version:
            async with self._reloading:
                if version != self._version:  # not already reloaded by a concurrent find
                    await self._reload()
        found = self._index.find(digest)
        return found if isinstance(found, StoredKey) else None

    async def create(self, name: str, team: str | None, user: str | None,
                     models: list[str] | None,
                     limits: Limits | None = None) -> tuple[StoredKey, str]:
        key, raw, digest = StoredKey.new(name, team, user, models, limits)
        await self._db().execute(
            f"INSERT INTO podium_keys ({_KEY_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", *key.row(digest))
        return key, raw

    async def list(self) -> list[StoredKey]:
        rows = await self._db().fetch(
            f"SELECT {_KEY_COLUMNS} FROM podium_keys ORDER BY created_at")
        return [StoredKey.from_row(tuple(r)) for r in rows]

    async def revoke(self, key_id: str) -> bool:
        status = await self._db().execute(
            "UPDATE podium_keys SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
            time.time(), key_id)
        return bool(status == "UPDATE 1")

    async def _reload(self) -> None:
        # One snapshot for the version and the rows: the index is never newer than its version.
        async with self._db().acquire() as conn, \
                conn.transaction(isolation="repeatable_read", readonly=True):
            version = await conn.fetchval("SELECT version FROM podium_keys_version")
            rows = await conn.fetch(
                f"SELECT {_KEY_COLUMNS} FROM podium_keys WHERE revoked_at IS NULL")
        self._index = DigestIndex((r["digest"], StoredKey.from_row(tuple(r))) for r in rows)
        self._version = version


class BatchedStore(_PgStore, ABC):
    _name = "batch"

    def __init__(self, dsn: str) -> None:
        super().__init__(dsn)
        self._writer: BatchWriter[Any] = BatchWriter(self._write, name=self._name)

    async def start(self) -> None:
        await super().start()
        self._writer.start()

    async def close(self) -> None:
        try:
            await self._writer.close()
        finally:
            await super().close()

    async def flush(self) -> None:
        await self._writer.flush()

    @abstractmethod
    async def _write(self, batch: list[Any]) -> None:
        """Write one batch in one transaction; raise to have it retried with the next."""


class PgSpendLedger(BatchedStore):
    _ddl, _what, _name = _SPEND_DDL, "spend ledger", "spend"

    def submit(self, row: SpendRow) -> None:
        self._writer.submit(row)

    async def has(self, request_id: str) -> bool:
        return bool(await self._db().fetchval(
            "SELECT EXISTS (SELECT 1 FROM podium_spend WHERE request_id = $1)", request_id))

    async def _write(self, batch: list[SpendRow]) -> None:
        marks = ", ".join(f"${i}" for i in range(1, _SPEND_WIDTH + 1))
        async with self._db().acquire() as conn, conn.transaction():
            await conn.executemany(f"INSERT INTO podium_spend VALUES ({marks})",
                                   [row.values() for row in batch])

    async def tasks(self, since: float | None, until: float | None,
                    limit: int = 1_000_000) -> list[TaskTotals]:
        await self._writer.flush()
        rows = await self._db().fetch(_TASKS_SQL, since or 0.0, until or 1e12, limit)
        return [TaskTotals.from_row(tuple(r), r[11]) for r in rows]

    async def spent_since(self, column: str, value: str, since: float) -> float:
        spent = await self._db().fetchval(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM podium_spend "
            f"WHERE {_SPEND_COLUMNS[column]} = $1 AND ts >= $2", value, since)
        return float(spent)

    async def report(self, group_by: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]]:
        await self._writer.flush()
        rows = await self._db().fetch(
            f"SELECT {_SPEND_GROUPS[group_by]}, COUNT(*), SUM((status = 200)::int), "
            f"SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd) FROM podium_spend "
            f"WHERE ts >= $1 AND ts < $2 GROUP BY 1 ORDER BY 6 DESC, 1",
            since or 0.0, until or 1e12)
        return [{group_by: r[0], "requests": r[1], "succeeded": r[2], "prompt_tokens": r[3],
                 "completion_tokens": r[4], "cost_usd": round(r[5], 10)} for r in rows]


class PgReviewQueue(_PgStore):
    _ddl, _what = _REVIEWS_DDL, "review queue"

    async def hold(self, review: Review) -> None:
        row = review.row()
        # Committed before the caller hears of it, so a held answer survives a crash.
        placeholders = ", ".join(f"${i}" for i in range(1, len(row) + 1))
        await self._db().execute(
            f"INSERT INTO podium_reviews ({_REVIEW_SELECT}) VALUES ({placeholders})", *row)

    async def get(self, review_id: str) -> Review | None:
        row = await self._db().fetchrow(
            f"SELECT {_REVIEW_SELECT} FROM podium_reviews WHERE id = $1", review_id)
        return Review.from_row(tuple(row)) if row else None

    async def list(self, status: str | None) -> list[Review]:
        sql, args = f"SELECT {_REVIEW_SELECT} FROM podium_reviews", []
        if status:
            sql, args = sql + " WHERE status = $1", [status]
        rows = await self._db().fetch(sql + " ORDER BY created_at, id", *args)
        return [Review.from_row(tuple(r)) for r in rows]

    async def decide(self, review_id: str, approve: bool, reviewer: str,
                     comment: str | None) -> Review | None:
        # Conditional on 'pending': of two concurrent reviewers, the second updates no row.
        row = await self._db().fetchrow(
            f"UPDATE podium_reviews SET status = $1, reviewer = $2, comment = $3, "
            f"decided_at = $4 WHERE id = $5 AND status = 'pending' RETURNING {_REVIEW_SELECT}",
            "approved" if approve else "rejected", reviewer, comment, time.time(), review_id)
        if row is None:
            existing = await self.get(review_id)
            if existing is not None:
                raise BadRequest(f"Review {review_id} was already {existing.status}.",
                                 code="review_already_decided")
            return None
        return Review.from_row(tuple(row))


class PgResponseLog(_PgStore):
    """Stored Responses API answers; behaves as `responses.ResponseLog` does in SQLite."""
    _ddl, _what = _RESPONSES_DDL, "response store"

    async def put(self, stored: StoredResponse) -> None:
        await self._db().execute(
            f"INSERT INTO podium_responses ({_RESPONSE_SELECT}) VALUES ($1, $2, $3, $4, $5, $6)",
            *stored.row())

    async def get(self, response_id: str, key_id: str) -> StoredResponse | None:
        row = await self._db().fetchrow(
            f"SELECT {_RESPONSE_SELECT} FROM podium_responses "
            "WHERE id = $1 AND key_id = $2 AND expires_at > $3", response_id, key_id, time.time())
        return StoredResponse.from_row(tuple(row)) if row else None

    async def delete(self, response_id: str, key_id: str) -> bool:
        status = await self._db().execute(
            "DELETE FROM podium_responses WHERE id = $1 AND key_id = $2 AND expires_at > $3",
            response_id, key_id, time.time())
        return bool(status == "DELETE 1")

    async def purge(self, now: float) -> int:
        status = await self._db().execute(
            "DELETE FROM podium_responses WHERE expires_at <= $1", now)
        return int(status.split()[-1])
