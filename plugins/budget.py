"""Budgets and the spend ledger.

Before a call, the request's maximum cost is reserved against every budget that applies (its
key's, its team's); after it, the reservation is released and the real cost (every attempt,
cascade escalations included) is added. A request is refused (429 `budget_exceeded`) when
spent + reserved + its own maximum would pass the budget, so concurrent requests can never
together spend more than the budget by more than one request's underestimate. The
check-and-reserve has no await inside: atomic on the event loop. Spend is durable in SQLite and
re-read per period on start.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.errors import BudgetExceeded
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.batch import BatchWriter
from plugins.settings import BudgetPeriod, Limits

if TYPE_CHECKING:
    from gateway.stores import SpendStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, key_name TEXT, team TEXT,
    model TEXT, deployment TEXT, status INTEGER, prompt_tokens INTEGER,
    completion_tokens INTEGER, cost_usd REAL NOT NULL
)"""
_GROUPS = {"key": "key_id", "team": "team", "model": "model", "deployment": "deployment",
           "day": "date(ts, 'unixepoch')"}


def period_start(period: BudgetPeriod, now: float) -> float:
    if period == "total":
        return 0.0
    day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return (day if period == "day" else day.replace(day=1)).timestamp()


class SpendLedger:
    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None      # the writer thread's
        self._reader: sqlite3.Connection | None = None  # the event loop's, for queries
        self._writer = BatchWriter(self._insert, name="spend")

    async def start(self) -> None:
        self._db, self._reader = _connect(self._path), _connect(self._path)
        self._writer.start()

    async def close(self) -> None:
        await self._writer.close()
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None

    def submit(self, row: tuple[Any, ...]) -> None:
        self._writer.submit(row)

    def _insert(self, rows: list[tuple[Any, ...]]) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            db.executemany("INSERT INTO spend VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)

    async def spent_since(self, column: str, value: str, since: float) -> float:
        row = self._read().execute(
            f"SELECT COALESCE(SUM(cost_usd), 0) FROM spend WHERE {column} = ? AND ts >= ?",
            (value, since)).fetchone()
        return float(row[0])

    async def report(self, group_by: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]]:
        await self._writer.flush()
        expr = _GROUPS[group_by]
        rows = self._read().execute(
            f"SELECT {expr}, COUNT(*), SUM(status = 200), SUM(prompt_tokens), "
            f"SUM(completion_tokens), SUM(cost_usd) FROM spend WHERE ts >= ? AND ts < ? "
            f"GROUP BY 1 ORDER BY 6 DESC", (since or 0.0, until or 1e12)).fetchall()
        return [{group_by: r[0], "requests": r[1], "succeeded": r[2], "prompt_tokens": r[3],
                 "completion_tokens": r[4], "cost_usd": round(r[5], 10)} for r in rows]

    async def flush(self) -> None:
        await self._writer.flush()

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("the spend ledger is not open")
        return self._db

    def _read(self) -> sqlite3.Connection:
        if self._reader is None:
            raise RuntimeError("the spend ledger is not open")
        return self._reader


def _connect(path: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(_SCHEMA)
    return db


class BudgetBook:
    """Spent and reserved amounts per budget scope, for the current period of each."""

    def __init__(self, ledger: SpendStore) -> None:
        self._ledger = ledger
        self._spent: dict[tuple[str, float], float] = {}
        self.reserved: dict[str, float] = {}

    async def load(self, scope: str, column: str, value: str, start: float) -> None:
        """On first use in a period, read what is durable (before the atomic check)."""
        if (scope, start) not in self._spent:
            spent = await self._ledger.spent_since(column, value, start)
            self._spent.setdefault((scope, start), spent)

    def spent(self, scope: str, start: float) -> float:
        return self._spent[(scope, start)]

    def add(self, scope: str, start: float, cost: float) -> None:
        if (scope, start) in self._spent:
            self._spent[(scope, start)] += cost


class BudgetPlugin(BasePlugin):
    name = "budget"

    def __init__(self, keys: Mapping[str, Limits], teams: Mapping[str, Limits],
                 book: BudgetBook, ledger: SpendStore) -> None:
        self._keys = keys
        self._teams = teams
        self._book = book
        self._ledger = ledger
        self._held: dict[str, list[tuple[str, float]]] = {}

    def _budgets(self, ctx: RequestContext) -> list[tuple[str, str, str, Limits]]:
        p, out = ctx.principal, []
        limits = self._keys.get(p.key_id)
        if limits is not None and limits.budget_usd is not None:
            out.append((f"key:{p.key_id}", "key_id", p.key_id, limits))
        limits = self._teams.get(p.team or "")
        if limits is not None and limits.budget_usd is not None and p.team:
            out.append((f"team:{p.team}", "team", p.team, limits))
        return out

    async def on_request(self, ctx: RequestContext) -> None:
        now, held = time.time(), []
        budgets = self._budgets(ctx)
        for scope, column, value, limits in budgets:
            await self._book.load(scope, column, value, period_start(limits.budget_period, now))
        # From here to the reservation there is no await: check-and-reserve is atomic.
        for scope, _, value, limits in budgets:
            start = period_start(limits.budget_period, now)
            spent = self._book.spent(scope, start)
            reserved = self._book.reserved.get(scope, 0.0)
            assert limits.budget_usd is not None
            if spent + reserved + ctx.reserve_usd > limits.budget_usd:
                ctx.decide(self.name, "rejected", f"{scope} budget")
                raise BudgetExceeded(
                    f"Budget exhausted for {scope.split(':')[0]} {value!r}: "
                    f"${spent:.6f} spent and ${reserved:.6f} reserved of "
                    f"${limits.budget_usd:.6f} per {limits.budget_period}.")
            held.append((scope, start))
        for scope, _ in held:
            self._book.reserved[scope] = self._book.reserved.get(scope, 0.0) + ctx.reserve_usd
        self._held[ctx.request_id] = held

    async def on_complete(self, ctx: RequestContext, outcome: Outcome) -> None:
        for scope, start in self._held.pop(ctx.request_id, ()):
            self._book.reserved[scope] -= ctx.reserve_usd
            self._book.add(scope, start, outcome.cost_usd)
        p = ctx.principal
        self._ledger.submit((ctx.started_at, ctx.request_id, p.key_id, p.name, p.team,
                             ctx.model, outcome.deployment, outcome.status,
                             outcome.usage.prompt_tokens, outcome.usage.completion_tokens,
                             outcome.cost_usd))
