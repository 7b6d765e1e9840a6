"""The audit trail in PostgreSQL: the same MAC chain and checkpoint as the embedded one.

An append runs in one READ COMMITTED transaction that first takes
`pg_advisory_xact_lock(_AUDIT_LOCK)`, then reads the last hash and inserts the batch in order
(`seq` is a BIGSERIAL, drawn under the lock). The lock is released only at COMMIT, and the next
appender reads the last hash in a statement after it got the lock, so it always sees the rows
just committed: any number of writers in any number of processes form one chain in `seq` order.
The checkpoint is a row of its own table, moved forward in the same transaction (a fleet has
no shared file), and logged as an event line. The key must come from `audit.hmac_key` or
$PODIUM_AUDIT_KEY: a fleet shares the database, not a generated file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Mapping
from typing import Any

import asyncpg
import orjson

from gateway.storage.audit_chain import GENESIS, ChainCheck, ChainKey, Checkpoint, VerifyResult
from gateway.storage.audit_chain import chain_key as resolve_key
from gateway.storage.postgres import BatchedStore
from gateway.storage.records import AuditRecord

log = logging.getLogger("podium.audit")
_AUDIT_LOCK = 0x706F_6469_756D_0002  # "podium" + 2: one audit append at a time, database-wide
_NEVER = sys.maxsize

_AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS podium_audit (
    seq BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, request_id TEXT NOT NULL,
    key_id TEXT, team TEXT, status INTEGER, record TEXT NOT NULL, prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS podium_audit_request_id ON podium_audit (request_id);
CREATE TABLE IF NOT EXISTS podium_audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
# Filter values arrive as strings (query parameters); SQLite compares them with numeric
# affinity, PostgreSQL needs them typed. A value that does not convert matches nothing.
_AUDIT_FILTERS: dict[str, tuple[str, Callable[[str], Any]]] = {
    "key_id": ("key_id = ${}", str), "team": ("team = ${}", str),
    "status": ("status = ${}", int), "request_id": ("request_id = ${}", str),
    "since": ("ts >= ${}", float), "until": ("ts < ${}", float),
    "trace_id": ("(record::jsonb ->> 'trace_id') = ${}", str),
    "event": ("(record::jsonb ->> 'event') = ${}", str),
    "router_embedder": ("(record::jsonb #>> '{{router,embedder}}') = ${}", str)}
_ROWS = ("SELECT seq, ts, request_id, key_id, team, status, record, prev_hash, hash "
         "FROM podium_audit ORDER BY seq")


class PgAuditLog(BatchedStore):
    _ddl, _what, _name = _AUDIT_DDL, "audit log", "audit"

    def __init__(self, dsn: str, hmac_key: str | None = None) -> None:
        super().__init__(dsn)
        self._key: ChainKey = resolve_key(hmac_key, None)
        self._keyed_from = _NEVER

    async def start(self) -> None:
        await super().start()
        if self._key.secret is not None:
            async with self._db().acquire() as conn, conn.transaction():
                await conn.execute(f"SELECT pg_advisory_xact_lock({_AUDIT_LOCK})")
                last = await conn.fetchval("SELECT COALESCE(MAX(seq), 0) FROM podium_audit")
                await conn.execute("INSERT INTO podium_audit_meta VALUES ('keyed_from', $1) "
                                   "ON CONFLICT (name) DO NOTHING", str(last + 1))
                self._keyed_from = int(await conn.fetchval(
                    "SELECT value FROM podium_audit_meta WHERE name = 'keyed_from'"))

    def submit(self, record: AuditRecord) -> None:
        self._writer.submit(record)

    async def _write(self, batch: list[AuditRecord]) -> None:
        texts = [r.text() for r in batch]
        async with self._db().acquire() as conn, conn.transaction(isolation="read_committed"):
            await conn.execute(f"SELECT pg_advisory_xact_lock({_AUDIT_LOCK})")
            last = await conn.fetchrow(
                "SELECT seq, hash FROM podium_audit ORDER BY seq DESC LIMIT 1")
            seq, prev = (last["seq"], last["hash"]) if last else (0, GENESIS)
            rows = []
            for record, text in zip(batch, texts, strict=True):
                seq += 1
                link = self._key if seq >= self._keyed_from else ChainKey(None, "legacy")
                digest = link.link(prev, text)
                rows.append((seq, record.time, record.request_id, record.key_id, record.team,
                             record.status, text, prev, digest))
                prev = digest
            await conn.executemany(
                "INSERT INTO podium_audit (seq, ts, request_id, key_id, team, status, record, "
                "prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)", rows)
            await self._advance(conn, seq, prev)

    async def _advance(self, conn: asyncpg.Connection, seq: int, digest: str) -> None:
        if self._key.secret is None:
            return
        checkpoint = Checkpoint.make(self._key, seq, digest, self._keyed_from)
        await conn.execute("INSERT INTO podium_audit_meta VALUES ('checkpoint', $1) "
                           "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                           checkpoint.json().decode())
        log.info("audit checkpoint", extra={"audit_seq": seq, "audit_head": digest})

    async def query(self, filters: Mapping[str, str], limit: int = 100) -> list[dict[str, Any]]:
        await self.flush()
        where, args = [], []
        for name, value in filters.items():
            if name in _AUDIT_FILTERS:
                clause, convert = _AUDIT_FILTERS[name]
                try:
                    args.append(convert(value))
                except (TypeError, ValueError):
                    return []
                where.append(clause.format(len(args)))
        sql = "SELECT seq, record, hash FROM podium_audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY seq DESC LIMIT ${len(args) + 1}"
        rows = await self._db().fetch(sql, *args, limit)
        return [{"seq": r["seq"], **orjson.loads(r["record"]), "hash": r["hash"]} for r in rows]

    async def has(self, request_id: str) -> bool:
        return bool(await self._db().fetchval(
            "SELECT EXISTS (SELECT 1 FROM podium_audit WHERE request_id = $1)", request_id))

    async def verify(self) -> VerifyResult:
        """Walk the chain from the first record; name the first one that does not fit; then
        check that it reaches the checkpoint with the checkpoint's hash."""
        await self.flush()
        try:
            async with self._db().acquire() as conn, \
                    conn.transaction(isolation="repeatable_read", readonly=True):
                meta = dict(await conn.fetch("SELECT name, value FROM podium_audit_meta"))
                head = meta.get("checkpoint")
                check = ChainCheck(self._key, int(meta.get("keyed_from", _NEVER)),
                                   Checkpoint.parse(head) if head else None)
                async for row in conn.cursor(_ROWS, prefetch=1000):
                    if (failed := check.add(tuple(row))) is not None:
                        return failed
        except asyncpg.PostgresError as exc:
            return VerifyResult(False, 0, f"cannot read the audit table: {exc}")
        return check.end()
