"""The audit trail: one record per request, append-only and hash-chained, in SQLite.

Each row stores the record's canonical JSON, the previous row's hash and its own hash,
sha256(prev_hash + record_json). Editing a record breaks its hash; deleting, inserting or
reordering rows breaks the next row's link. The chain is extended inside one write transaction
(`BEGIN IMMEDIATE`), so several worker processes appending to one file still form one chain.
Records never hold keys; prompts and answers only with `audit.include_content: true`.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.storage.batch import BatchedSQLiteStore
from plugins.base import BasePlugin, Outcome, RequestContext

if TYPE_CHECKING:
    from gateway.storage.contracts import AuditStore

GENESIS = "0" * 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT, team TEXT, status INTEGER,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
)"""
_FILTERS = {"key_id": "key_id = ?", "team": "team = ?", "status": "status = ?",
            "request_id": "request_id = ?", "since": "ts >= ?", "until": "ts < ?",
            "trace_id": "json_extract(record, '$.trace_id') = ?",
            "event": "json_extract(record, '$.event') = ?"}


def chain_hash(prev_hash: str, record_json: str) -> str:
    return hashlib.sha256((prev_hash + record_json).encode()).hexdigest()


class AuditLog(BatchedSQLiteStore[dict[str, Any]]):
    _schema, _what = _SCHEMA, "audit log"

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            prev = row[0] if row else GENESIS
            for record in records:
                text = orjson.dumps(record, option=orjson.OPT_SORT_KEYS).decode()
                digest = chain_hash(prev, text)
                db.execute("INSERT INTO audit (ts, request_id, key_id, team, status, record, "
                           "prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           (record["time"], record["request_id"], record.get("key_id"),
                            record.get("team"), record.get("status"), text, prev, digest))
                prev = digest
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def query(self, filters: Mapping[str, str], limit: int = 100) -> list[dict[str, Any]]:
        await self.flush()
        where = [(_FILTERS[k], v) for k, v in filters.items() if k in _FILTERS]
        sql = "SELECT seq, record, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(w for w, _ in where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self._read().execute(sql, [*(v for _, v in where), limit]).fetchall()
        return [{"seq": seq, **orjson.loads(text), "hash": digest} for seq, text, digest in rows]

    async def verify(self) -> VerifyResult:
        await self.flush()
        return verify(self._path)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    records: int
    problem: str | None = None


def verify(path: str) -> VerifyResult:
    """Walk the chain from the first record; name the first one that does not fit."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT seq, request_id, record, prev_hash, hash FROM audit "
                          "ORDER BY seq").fetchall()
    except sqlite3.OperationalError as exc:
        return VerifyResult(False, 0, f"cannot read the audit table: {exc}")
    finally:
        db.close()
    check = ChainCheck()
    for row in rows:
        if (failed := check.add(*row)) is not None:
            return failed
    return check.ok()


class ChainCheck:
    """Rows in seq order, one at a time (any backend); `add` names the first bad one."""

    def __init__(self) -> None:
        self.prev, self.count = GENESIS, 0

    def add(self, seq: int, request_id: str, text: str, prev_hash: str,
            digest: str) -> VerifyResult | None:
        where = f"record seq={seq} (request {request_id})"
        if prev_hash != self.prev:
            return VerifyResult(False, self.count, f"{where}: does not follow the previous "
                                "record (a record was removed, inserted or reordered)")
        if chain_hash(prev_hash, text) != digest:
            return VerifyResult(False, self.count, f"{where}: content does not match its hash "
                                "(the record was altered)")
        self.prev, self.count = digest, self.count + 1
        return None

    def ok(self) -> VerifyResult:
        return VerifyResult(True, self.count)


class AuditPlugin(BasePlugin):
    name = "audit"

    def __init__(self, log: AuditStore, include_content: bool) -> None:
        self._log = log
        self._include_content = include_content

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        self._log.submit(self.record(ctx, outcome))

    def record(self, ctx: RequestContext, outcome: Outcome) -> dict[str, Any]:
        p = ctx.principal
        record: dict[str, Any] = {
            "time": ctx.started_at, "request_id": ctx.request_id, "trace_id": ctx.trace_id,
            "span_id": ctx.span_id,
            "key_id": p.key_id, "key_name": p.name, "team": p.team, "user": p.user,
            "model": ctx.model, "route": ctx.plan.rule if ctx.plan else None,
            "attempted": outcome.attempted, "deployment": outcome.deployment,
            "prompt_tokens": outcome.usage.prompt_tokens,
            "completion_tokens": outcome.usage.completion_tokens,
            "cost_usd": round(outcome.cost_usd, 10), "data_class": ctx.data_class,
            "pii": dict(ctx.pii_counts), "decisions": ctx.decisions, "status": outcome.status,
            "error_code": outcome.error_code, "review_id": outcome.review_id,
            "cache": outcome.cache, "stream": ctx.stream,
        }
        if self._include_content:
            record["request_messages"] = ctx.body.get("messages")
            record["answer"] = outcome.answer
        return record
