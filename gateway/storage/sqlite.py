"""The embedded durable stores, in SQLite: spend ledger, review queue (and, in sqlite_audit.py,
the audit trail).

One file (`storage.path`; the audit trail may have its own, `audit.path`) that several worker
processes share. The ledger and the audit trail are appended to in batches by a writer thread
(`BatchWriter`) and read on the event loop, each through its own connection; the audit chain
is extended inside one `BEGIN IMMEDIATE` transaction, so concurrent appenders in several
processes still form one chain. A held review is written at once, before the caller hears of it.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any, Generic, TypeVar

from gateway.errors import BadRequest
from gateway.storage.batch import BatchWriter
from gateway.storage.records import Review, SpendRow, TaskTotals

T = TypeVar("T")

def sqlite_connect(path: str, schema: str) -> sqlite3.Connection:
    """The embedded stores' connection: autocommit (transactions are explicit), WAL so readers
    never wait for the writer, usable from the writer thread, and the schema in place. A missing
    folder is made (PODIUM_STATE_DIR may name one that does not exist yet)."""
    if path != ":memory:" and not path.startswith("file:"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(schema)
    return db


class SqliteFile:
    """An embedded store on one connection (`sqlite_connect`), opened at start and closed at
    shutdown; a subclass names its schema and what it is, for the error when used unopened."""

    schema: str
    what: str

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._db = sqlite_connect(self._path, self.schema)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the {self.what} is not open")
        return self._db



class BatchedSQLiteStore(Generic[T]):
    """An embedded store appended to in batches by a writer thread and read on the event loop,
    each through its own connection (so a query never shares the writer's transaction)."""

    _schema = ""
    _what = "store"

    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None      # the writer thread's
        self._reader: sqlite3.Connection | None = None  # the event loop's, for queries
        self._writer: BatchWriter[T] = BatchWriter(self._write_batch, name=self._what)

    async def start(self) -> None:
        self._db = sqlite_connect(self._path, self._schema)
        self._reader = sqlite_connect(self._path, self._schema)
        self._writer.start()

    async def close(self) -> None:
        await self._writer.close()
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None

    def submit(self, item: T) -> None:
        self._writer.submit(item)

    async def flush(self) -> None:
        await self._writer.flush()

    def _write_batch(self, items: list[T]) -> None:
        raise TypeError(f"{type(self).__name__} must define _write_batch")

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError(f"the {self._what} is not open")
        return self._db

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError(f"the {self._what} is not open")
        return self._reader


# ---- spend ledger -------------------------------------------------------------------------

_SPEND_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, key_name TEXT, team TEXT,
    model TEXT, deployment TEXT, status INTEGER, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS spend_request_id ON spend (request_id);
"""
# Added for tasks and workflows; a ledger made before them gains them on start.
_SPEND_TASK_COLUMNS = {"task": "TEXT", "workflow": "TEXT", "escalations": "INTEGER DEFAULT 0",
                       "held": "INTEGER DEFAULT 0", "duration_s": "REAL DEFAULT 0"}
# One row per task: its calls summed. The status of the call that started last is read from
# the greatest "<ts> <status>" text (ts zero-padded, so text order is time order). A call
# held for human approval is no failure: it counts as answered.
_TASKS_SQL = """
SELECT task, MAX(workflow), COUNT(*), SUM(status != 200 AND held = 0), SUM(escalations),
       SUM(held),
       SUM(prompt_tokens), SUM(completion_tokens), SUM(cost_usd), MIN(ts),
       MAX(ts + duration_s),
       MAX(printf('%020.6f %d', ts, CASE WHEN held = 1 THEN 200 ELSE status END))
FROM spend WHERE task IS NOT NULL AND ts >= ? AND ts < ?
GROUP BY task ORDER BY MIN(ts) DESC LIMIT ?"""


def add_columns(db: sqlite3.Connection, table: str, columns: dict[str, str]) -> None:
    """Columns a newer release added to `table`, added to a file made before it."""
    have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
    for name, kind in columns.items():
        if name not in have:
            try:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it meanwhile
                if "duplicate column" not in str(exc):
                    raise
_SPEND_WIDTH = len(SpendRow.__dataclass_fields__)


_SPEND_GROUPS = {"key": "key_id", "team": "team", "model": "model",
                 "deployment": "deployment", "day": "date(ts, 'unixepoch')"}


class SpendLedger(BatchedSQLiteStore[SpendRow]):
    _schema, _what = _SPEND_SCHEMA, "spend ledger"

    async def start(self) -> None:
        await super().start()
        add_columns(self._conn(), "spend", _SPEND_TASK_COLUMNS)
        self._conn().execute("CREATE INDEX IF NOT EXISTS spend_task ON spend (task, ts)")

    def _write_batch(self, rows: list[SpendRow]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.executemany(f"INSERT INTO spend VALUES ({','.join('?' * _SPEND_WIDTH)})",
                           [r.values() for r in rows])

    async def tasks(self, since: float | None, until: float | None,
                    limit: int = 1_000_000) -> list[TaskTotals]:
        await self._writer.flush()
        rows = self._read().execute(_TASKS_SQL, (since or 0.0, until or 1e12, limit))
        return [TaskTotals.from_row(r, int(r[11].rsplit(" ", 1)[1])) for r in rows]

    async def has(self, request_id: str) -> bool:
        row = self._read().execute("SELECT 1 FROM spend WHERE request_id = ? LIMIT 1",
                                   (request_id,)).fetchone()
        return row is not None

    async def spent_since(self, column: str, value: str, since: float) -> float:
        row = self._read().execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE {column} = ? AND ts >= ?",
            (value, since)).fetchone()
        return float(row[0])

    async def report(self, group_by: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]]:
        await self._writer.flush()
        expr = _SPEND_GROUPS[group_by]
        rows = self._read().execute(
            f"SELECT {expr}, COUNT(*), SUM(status = 200), SUM(prompt_tokens), "
            f"SUM(completion_tokens), SUM(cost_usd) FROM spend WHERE ts >= ? AND ts < ? "
            f"GROUP BY 1 ORDER BY 6 DESC", (since or 0.0, until or 1e12)).fetchall()
        return [{group_by: r[0], "requests": r[1], "succeeded": r[2], "prompt_tokens": r[3],
                 "completion_tokens": r[4], "cost_usd": round(r[5], 10)} for r in rows]


# ---- review queue -------------------------------------------------------------------------

_REVIEW_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL, rule TEXT,
    request_id TEXT, key_id TEXT, team TEXT, model TEXT, data_class TEXT,
    request TEXT NOT NULL, answer TEXT NOT NULL,
    reviewer TEXT, comment TEXT, decided_at REAL
)"""


class ReviewQueue:
    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._db = sqlite_connect(self._path, _REVIEW_SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def hold(self, review: Review) -> None:
        row = review.row()
        # Written before the caller hears of it, so a held answer survives a crash; one small
        # row in WAL mode, on the loop thread, so reads never race a writer thread.
        self._conn().execute(f"INSERT INTO reviews VALUES ({','.join('?' * len(row))})", row)

    async def get(self, review_id: str) -> Review | None:
        row = self._conn().execute("SELECT * FROM reviews WHERE id = ?",
                                   (review_id,)).fetchone()
        return Review.from_row(row) if row else None

    async def list(self, status: str | None) -> list[Review]:
        sql, args = "SELECT * FROM reviews", tuple[str, ...]()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        return [Review.from_row(r)
                for r in self._conn().execute(sql + " ORDER BY created_at", args)]

    async def decide(self, review_id: str, approve: bool, reviewer: str,
                     comment: str | None) -> Review | None:
        status = "approved" if approve else "rejected"
        cur = self._conn().execute(
            "UPDATE reviews SET status = ?, reviewer = ?, comment = ?, decided_at = ? "
            "WHERE id = ? AND status = 'pending'",
            (status, reviewer, comment, time.time(), review_id))
        if cur.rowcount != 1:
            existing = await self.get(review_id)
            if existing is not None:
                raise BadRequest(f"Review {review_id} was already {existing.status}.",
                                 code="review_already_decided")
            return None
        return await self.get(review_id)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the review queue is not open")
        return self._db
