"""The embedded audit trail, in SQLite: MAC-chained rows, and a checkpoint kept apart from them.

Rows are appended in batches by the writer thread, each batch inside one `BEGIN IMMEDIATE`
transaction, so concurrent appenders in several worker processes still form one chain. After a
batch commits, the checkpoint (`<database>.head`, see audit_chain.py) is moved forward under
an exclusive file lock, and only ever forward, so two workers never set it back.
"""

from __future__ import annotations

import fcntl
import logging
import sqlite3
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson

from gateway.storage.audit_chain import GENESIS, ChainCheck, ChainKey, Checkpoint, VerifyResult
from gateway.storage.audit_chain import chain_key as resolve_key
from gateway.storage.records import AuditRecord
from gateway.storage.sqlite import BatchedSQLiteStore

log = logging.getLogger("podium.audit")
_NEVER = sys.maxsize  # keyed_from of an unkeyed chain: every link is plain sha256

_AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    key_id TEXT, team TEXT, status INTEGER,
    record TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_request_id ON audit (request_id);
CREATE TABLE IF NOT EXISTS audit_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_FILTERS = {"key_id": "key_id = ?", "team": "team = ?", "status": "status = ?",
            "request_id": "request_id = ?", "since": "ts >= ?", "until": "ts < ?",
            "trace_id": "json_extract(record, '$.trace_id') = ?",
            "event": "json_extract(record, '$.event') = ?",
            "router_embedder": "json_extract(record, '$.router.embedder') = ?"}
_ROWS = "SELECT seq, ts, request_id, key_id, team, status, record, prev_hash, hash FROM audit"


class AuditLog(BatchedSQLiteStore[AuditRecord]):
    _schema, _what = _AUDIT_SCHEMA, "audit log"

    def __init__(self, path: str, hmac_key: str | None = None) -> None:
        super().__init__(path)
        embedded = path != ":memory:"
        self._head = Path(f"{path}.head") if embedded else None
        self._key: ChainKey = resolve_key(hmac_key, Path(f"{path}.key") if embedded else None)
        self._keyed_from = _NEVER

    async def start(self) -> None:
        await super().start()
        self._keyed_from = _keyed_from(self._conn(), self._key)

    def _write_batch(self, records: list[AuditRecord]) -> None:
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0], row[1]) if row else (0, GENESIS)
            for record in records:
                text = record.text()
                seq += 1
                link = self._key if seq >= self._keyed_from else ChainKey(None, "legacy")
                digest = link.link(prev, text)
                db.execute("INSERT INTO audit (seq, ts, request_id, key_id, team, status, "
                           "record, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           (seq, record.time, record.request_id, record.key_id, record.team,
                            record.status, text, prev, digest))
                prev = digest
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._advance(seq, prev)

    def _advance(self, seq: int, digest: str) -> None:
        """Move the checkpoint to (seq, digest), unless another worker already went further."""
        if self._head is None or self._key.secret is None:
            return
        checkpoint = Checkpoint.make(self._key, seq, digest, self._keyed_from)
        with open(self._head, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            current = Checkpoint.parse(handle.read() or b"{}")
            if current is not None and current.seq >= seq:
                return
            handle.seek(0)
            handle.truncate()
            handle.write(checkpoint.json())
            handle.flush()
        log.info("audit checkpoint", extra={"audit_seq": seq, "audit_head": digest})

    async def query(self, filters: Mapping[str, str], limit: int = 100) -> list[dict[str, Any]]:
        await self.flush()
        where = [(_FILTERS[k], v) for k, v in filters.items() if k in _FILTERS]
        sql = "SELECT seq, record, hash FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(w for w, _ in where)
        sql += " ORDER BY seq DESC LIMIT ?"
        rows = self._read().execute(sql, [*(v for _, v in where), limit]).fetchall()
        return [{"seq": seq, **orjson.loads(text), "hash": digest} for seq, text, digest in rows]

    async def has(self, request_id: str) -> bool:
        row = self._read().execute("SELECT 1 FROM audit WHERE request_id = ? LIMIT 1",
                                   (request_id,)).fetchone()
        return row is not None

    async def verify(self) -> VerifyResult:
        await self.flush()
        return verify(self._path, self._key, self._head)


def verify(path: str, key: ChainKey, head: Path | None) -> VerifyResult:
    """Walk the chain from the first record; name the first one that does not fit; then check
    that it reaches the checkpoint with the checkpoint's hash."""
    db = sqlite3.connect(path)
    try:
        meta = db.execute("SELECT value FROM audit_meta WHERE name = 'keyed_from'").fetchone()
        checkpoint = _read_checkpoint(head)
        check = ChainCheck(key, int(meta[0]) if meta else _NEVER, checkpoint)
        for row in db.execute(_ROWS + " ORDER BY seq"):
            if (failed := check.add(row)) is not None:
                return failed
    except sqlite3.OperationalError as exc:
        return VerifyResult(False, 0, f"cannot read the audit table: {exc}")
    finally:
        db.close()
    return check.end()


def _read_checkpoint(head: Path | None) -> Checkpoint | None:
    if head is None:
        return None
    try:
        return Checkpoint.parse(head.read_bytes())
    except FileNotFoundError:
        return None


def _keyed_from(db: sqlite3.Connection, key: ChainKey) -> int:
    """From which seq the chain is MACed: 1 for a new trail; after the existing rows for a
    trail an older Podium started; never when there is no key. Recorded once, for every
    worker (the checkpoint covers it, so it cannot be moved)."""
    if key.secret is None:
        return _NEVER
    db.execute("BEGIN IMMEDIATE")
    try:
        row = db.execute("SELECT value FROM audit_meta WHERE name = 'keyed_from'").fetchone()
        if row is None:
            last = db.execute("SELECT COALESCE(MAX(seq), 0) FROM audit").fetchone()[0]
            row = (str(last + 1),)
            db.execute("INSERT INTO audit_meta (name, value) VALUES ('keyed_from', ?)", row)
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
    return int(row[0])

