"""One contract for the durable stores, run against both backends: SQLite and PostgreSQL.

Every test takes the `backend` fixture, parametrized over "sqlite" (files in tmp_path, as
`open_stores` lays them out) and "postgres" (a fresh schema per test on PODIUM_TEST_PG_DSN,
default postgresql://postgres@127.0.0.1:5432/test, chosen through the DSN's search_path and
dropped afterwards). A second store instance on the same files or schema stands for a second
worker process. `Backend.sql` edits the tables directly, as an operator's tool (or an attacker)
would. The postgres cases are skipped when the server cannot be reached.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest

from gateway.errors import BadRequest
from gateway.pipeline.identity import digest_of, key_id_for
from gateway.storage.audit_chain import VerifyResult
from gateway.storage.config_versions import ConfigVersions
from gateway.storage.contracts import (
    AuditStore,
    ConfigVersionStore,
    KeyStoreBackend,
    ResponseStore,
    ReviewStore,
    SessionStore,
    ShadowStore,
    SpendStore,
    Store,
)
from gateway.storage.keystore import KeyStore
from gateway.storage.learning import router_outcomes
from gateway.storage.postgres import PgKeyStore, PgResponseLog, PgReviewQueue, PgSpendLedger
from gateway.storage.postgres_audit import PgAuditLog
from gateway.storage.postgres_management import PgConfigVersions, PgShadowPairs
from gateway.storage.postgres_sessions import PgSessions
from gateway.storage.records import (
    AuditRecord,
    ConfigVersion,
    DashboardSession,
    Review,
    ShadowPair,
    SpendRow,
    StoredResponse,
    TaskTotals,
)
from gateway.storage.responses import ResponseLog
from gateway.storage.sessions import SqliteSessions
from gateway.storage.shadow_pairs import ShadowPairs
from gateway.storage.sqlite import ReviewQueue, SpendLedger
from gateway.storage.sqlite_audit import AuditLog
from plugins.settings import Limits
from tests.support.waiting import until

_DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
PG_DSN = os.environ.get("PODIUM_TEST_PG_DSN", _DEFAULT_DSN)
S = TypeVar("S", bound=Store)
_pg_state: dict[str, str | None] = {}  # "problem" -> why PostgreSQL is unusable (None: usable)


async def _pg_problem() -> str | None:
    if "problem" not in _pg_state:
        try:
            conn = await asyncpg.connect(PG_DSN, timeout=3)
        except Exception as exc:
            _pg_state["problem"] = f"{type(exc).__name__}: {exc}"
        else:
            await conn.close()
            _pg_state["problem"] = None
    return _pg_state["problem"]


@dataclass
class Backend:
    name: str
    tmp: Path
    dsn: str | None = None          # set for postgres
    opened: list[Store] = field(default_factory=list)

    async def _started(self, store: S) -> S:
        await store.start()
        self.opened.append(store)
        return store

    def _file(self, name: str) -> str:
        return str(self.tmp / f"{name}.sqlite3")

    async def keys(self) -> KeyStoreBackend:
        return await self._started(
            PgKeyStore(self.dsn) if self.dsn else KeyStore(self._file("keys")))

    async def sessions(self) -> SessionStore:
        return await self._started(
            PgSessions(self.dsn) if self.dsn else SqliteSessions(self._file("keys")))

    async def spend(self) -> SpendStore:
        return await self._started(
            PgSpendLedger(self.dsn) if self.dsn else SpendLedger(self._file("podium")))

    async def audit(self) -> AuditStore:
        return await self._started(
            PgAuditLog(self.dsn, AUDIT_KEY) if self.dsn
            else AuditLog(self._file("podium"), AUDIT_KEY))

    async def reviews(self) -> ReviewStore:
        return await self._started(
            PgReviewQueue(self.dsn) if self.dsn else ReviewQueue(self._file("podium")))

    async def responses(self) -> ResponseStore:
        return await self._started(
            PgResponseLog(self.dsn) if self.dsn else ResponseLog(self._file("podium")))

    async def versions(self) -> ConfigVersionStore:
        return await self._started(
            PgConfigVersions(self.dsn) if self.dsn else ConfigVersions(self._file("podium")))

    async def shadow(self) -> ShadowStore:
        return await self._started(
            PgShadowPairs(self.dsn) if self.dsn else ShadowPairs(self._file("podium")))

    async def sql(self, *statements: str, file: str = "podium") -> None:
        """Run statements directly; `{t}` is the table prefix ("podium_" in PostgreSQL)."""
        if self.dsn:
            conn = await asyncpg.connect(self.dsn)
            try:
                for statement in statements:
                    await conn.execute(statement.format(t="podium_"))
            finally:
                await conn.close()
            return
        db = sqlite3.connect(self._file(file), isolation_level=None)
        try:
            for statement in statements:
                db.execute(statement.format(t=""))
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    schema = None
    if request.param == "postgres":
        problem = await _pg_problem()
        if problem is not None:
            where = "127.0.0.1:5432" if PG_DSN == _DEFAULT_DSN else "PODIUM_TEST_PG_DSN"
            pytest.skip(f"PostgreSQL is not reachable on {where}: {problem}")
        schema = f"podium_test_{uuid.uuid4().hex[:12]}"
        conn = await asyncpg.connect(PG_DSN)
        try:
            await conn.execute(f"CREATE SCHEMA {schema}")
        finally:
            await conn.close()
        sep = "&" if "?" in PG_DSN else "?"
        b = Backend("postgres", tmp_path, f"{PG_DSN}{sep}options=-csearch_path%3D{schema}")
    else:
        b = Backend("sqlite", tmp_path)
    try:
        yield b
    finally:
        for store in reversed(b.opened):
            await store.close()
        if schema is not None:
            conn = await asyncpg.connect(PG_DSN)
            try:
                await conn.execute(f"DROP SCHEMA {schema} CASCADE")
            finally:
                await conn.close()


# --- keys ---------------------------------------------------------------------------------

async def test_keys_create_find_list_revoke(backend: Backend) -> None:
    keys = await backend.keys()
    limits = Limits(rpm=5, budget_usd=2.5, budget_period="day")
    key, raw = await keys.create("app", "search", "ana", ["chat", "embed"], limits)
    other, other_raw = await keys.create("batch", None, None, None)
    assert raw.startswith("sk-podium-") and raw != other_raw
    assert key.id == key_id_for(digest_of(raw))
    assert (key.name, key.team, key.user, key.models) == ("app", "search", "ana",
                                                          ("chat", "embed"))
    assert key.revoked_at is None and other.models is None
    assert key.limits == limits and other.limits is None

    assert await keys.find(digest_of(raw)) == key
    assert await keys.find(digest_of(other_raw)) == other
    assert await keys.find(digest_of("sk-podium-unknown")) is None

    listed = await keys.list()
    assert listed == [key, other]  # oldest first
    for stored in listed:  # only the digest is kept, and not even that is listed
        assert raw not in repr(stored) and digest_of(raw) not in repr(stored)
        assert raw.encode() not in orjson.dumps(stored.public())

    assert await keys.revoke(key.id) is True
    assert await keys.revoke(key.id) is False       # already revoked
    assert await keys.revoke("key_nonexistent") is False
    assert await keys.find(digest_of(raw)) is None
    assert await keys.find(digest_of(other_raw)) == other
    revoked = (await keys.list())[0]
    assert revoked.id == key.id and revoked.revoked_at is not None
    assert revoked.public()["revoked_at"] is not None


async def test_key_changes_are_seen_by_a_second_process(backend: Backend) -> None:
    first, second = await backend.keys(), await backend.keys()  # both running before the change
    key, raw = await first.create("app", "search", None, None)
    assert await second.find(digest_of(raw)) == key
    assert await first.revoke(key.id)
    assert await second.find(digest_of(raw)) is None  # the very next lookup refuses it

    key2, raw2 = await second.create("app2", None, None, ["chat"])
    assert await first.find(digest_of(raw2)) == key2
    # An operator revoking with plain SQL is seen too.
    await backend.sql(f"UPDATE {{t}}keys SET revoked_at = 1 WHERE id = '{key2.id}'",
                      file="keys")
    assert await first.find(digest_of(raw2)) is None
    assert await second.find(digest_of(raw2)) is None


async def test_sessions_open_find_end_expire_across_processes(backend: Backend) -> None:
    one, other = await backend.sessions(), await backend.sessions()
    live = DashboardSession("ops", "0123456789abcdef", time.time() + 60)
    await one.open("a" * 64, live)
    await one.open("b" * 64, DashboardSession("ops", "0123456789abcdef", time.time() - 1))
    assert await other.find("a" * 64) == live
    assert await other.find("b" * 64) is None, "an expired session is not found"
    assert await other.end("a" * 64) is True
    assert await one.find("a" * 64) is None, "ended in one process: ended in every one"
    assert await one.end("a" * 64) is False


async def test_key_store_reopened_keeps_keys(backend: Backend) -> None:
    keys = await backend.keys()
    key, raw = await keys.create("app", None, None, None)
    await keys.close()
    assert await keys.find(digest_of(raw)) is None  # closed: nothing is accepted
    reopened = await backend.keys()
    assert await reopened.find(digest_of(raw)) == key


# --- spend --------------------------------------------------------------------------------

DAY = 1709251200.0  # 2024-03-01T00:00:00Z
SPEND_ROWS = [  # ts, request_id, key_id, key_name, team, model, deployment, status, pt, ct, $
    (DAY + 36000, "r1", "key_a", "a", "x", "m1", "d1", 200, 10, 5, 0.5),
    (DAY + 86399.5, "r2", "key_a", "a", "x", "m2", "d2", 200, 20, 10, 0.25),  # 23:59:59.5
    (DAY + 86400, "r3", "key_b", "b", "y", "m1", "d1", 500, 30, 0, 0.125),    # next UTC day
    (DAY + 2 * 86400 + 5, "r4", "key_b", "b", None, "m1", "d3", 200, 1, 2, 1.0),
]


def _row(group: str, value: Any, n: int, ok: int, pt: int, ct: int, cost: float) -> dict[str, Any]:
    return {group: value, "requests": n, "succeeded": ok, "prompt_tokens": pt,
            "completion_tokens": ct, "cost_usd": cost}


EXPECTED_REPORTS = {
    "key": [_row("key", "key_b", 2, 1, 31, 2, 1.125), _row("key", "key_a", 2, 2, 30, 15, 0.75)],
    "team": [_row("team", None, 1, 1, 1, 2, 1.0), _row("team", "x", 2, 2, 30, 15, 0.75),
             _row("team", "y", 1, 0, 30, 0, 0.125)],
    "model": [_row("model", "m1", 3, 2, 41, 7, 1.625), _row("model", "m2", 1, 1, 20, 10, 0.25)],
    "deployment": [_row("deployment", "d3", 1, 1, 1, 2, 1.0),
                   _row("deployment", "d1", 2, 1, 40, 5, 0.625),
                   _row("deployment", "d2", 1, 1, 20, 10, 0.25)],
    "day": [_row("day", "2024-03-03", 1, 1, 1, 2, 1.0),
            _row("day", "2024-03-01", 2, 2, 30, 15, 0.75),
            _row("day", "2024-03-02", 1, 0, 30, 0, 0.125)],
}


@pytest.mark.parametrize("group_by", list(EXPECTED_REPORTS))
async def test_spend_report(backend: Backend, group_by: str) -> None:
    spend = await backend.spend()
    for row in SPEND_ROWS:
        spend.submit(SpendRow(*row))
    # report flushes first: read-your-writes without an explicit flush
    assert await spend.report(group_by, None, None) == EXPECTED_REPORTS[group_by]


async def test_spend_totals_and_windows(backend: Backend) -> None:
    spend, other = await backend.spend(), await backend.spend()
    for row in SPEND_ROWS:
        spend.submit(SpendRow(*row))
    await spend.flush()
    assert await spend.spent_since("key_id", "key_a", 0.0) == 0.75
    assert await spend.spent_since("key_id", "key_b", DAY + 86400) == 1.125  # ts >= since
    assert await spend.spent_since("team", "x", DAY + 36001) == 0.25
    assert await spend.spent_since("team", "nobody", 0.0) == 0.0
    assert await other.spent_since("key_id", "key_a", 0.0) == 0.75  # another process sees it
    # since <= ts < until
    assert await spend.report("key", DAY + 86400, DAY + 2 * 86400) == [
        _row("key", "key_b", 1, 0, 30, 0, 0.125)]
    assert await spend.report("day", None, DAY + 86400) == [
        _row("day", "2024-03-01", 2, 2, 30, 15, 0.75)]
    assert await spend.report("model", DAY * 2, None) == []


async def test_spend_batches_in_the_background_and_on_close(backend: Backend) -> None:
    spend, reader = await backend.spend(), await backend.spend()
    spend.submit(SpendRow(*SPEND_ROWS[0]))

    async def written() -> bool:  # the writer flushes by itself every 0.2 s
        return await reader.spent_since("key_id", "key_a", 0.0) == 0.5
    await until(written, "the background writer to flush")
    spend.submit(SpendRow(*SPEND_ROWS[1]))
    await spend.close()  # close writes what is left
    assert await reader.spent_since("key_id", "key_a", 0.0) == 0.75


async def test_spend_failed_write_loses_nothing(backend: Backend) -> None:
    spend = await backend.spend()
    await backend.sql("ALTER TABLE {t}spend RENAME TO {t}spend_away")
    for row in SPEND_ROWS:
        spend.submit(SpendRow(*row))
    with pytest.raises(Exception):  # noqa: B017 - sqlite3 or asyncpg error
        await spend.flush()
    await backend.sql("ALTER TABLE {t}spend_away RENAME TO {t}spend")
    await spend.flush()
    assert await spend.report("key", None, None) == EXPECTED_REPORTS["key"]


TASK_ROWS = [  # ..., cost, task, workflow, escalations, held, duration_s
    (100.0, "r1", "key_a", "a", "x", "m", "d", 200, 10, 5, 0.5, "team:x t1", "triage", 0, 0, 1.0),
    (102.0, "r2", "key_a", "a", "x", "m", "d", 500, 4, 0, 0.0, "team:x t1", "triage", 1, 0, 2.0),
    (101.0, "r3", "key_b", "b", "x", "m", "d", 200, 1, 1, 0.25, "team:x t1", "triage", 0, 1, 0.5),
    (110.0, "r4", "key_c", "c", "y", "m", "d", 200, 2, 2, 0.125, "team:y t1", "triage", 0, 0, 3),
    (120.0, "r5", "key_a", "a", "x", "m", "d", 200, 3, 3, 1.0, "team:x t2", None, 0, 0, 0.25),
    (130.0, "r6", "key_a", "a", "x", "m", "d", 200, 9, 9, 9.0),        # in no task
]


async def test_spend_per_task(backend: Backend) -> None:
    spend = await backend.spend()
    for row in TASK_ROWS:
        spend.submit(SpendRow(*row))
    tasks = await spend.tasks(None, None)                # flushes first; newest task first
    assert [t.task for t in tasks] == ["team:x t2", "team:y t1", "team:x t1"]
    assert tasks[2] == TaskTotals(task="team:x t1", workflow="triage", calls=3, failures=1,
                                  escalations=1, approvals=1, prompt_tokens=15,
                                  completion_tokens=6, cost_usd=0.75, first_at=100.0,
                                  last_at=104.0, last_status=500)
    assert tasks[2].ended_in_error and not tasks[1].ended_in_error
    assert tasks[0].workflow == "none" and tasks[0].last_at == 120.25
    assert tasks[2].public()["owner"] == "team:x" and tasks[2].public()["task"] == "t1"
    assert tasks[2].public()["duration_s"] == 4.0
    late = await spend.tasks(101.0, 120.0)               # calls started in [since, until)
    assert [(t.task, t.calls) for t in late] == [("team:y t1", 1), ("team:x t1", 2)]
    assert [t.task for t in await spend.tasks(None, None, limit=1)] == ["team:x t2"]
    # The task columns are added to a ledger made before them, and old rows are in no task.
    assert await spend.report("key", None, None)  # the rest of the ledger is unchanged


async def test_spend_ledger_made_before_tasks_gains_their_columns(backend: Backend) -> None:
    old = ("CREATE TABLE {t}spend (ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, "
           "key_name TEXT, team TEXT, model TEXT, deployment TEXT, status INTEGER, "
           "prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL NOT NULL)",
           "INSERT INTO {t}spend VALUES (1, 'old', 'key_a', 'a', 'x', 'm', 'd', 200, 1, 1, 0.5)")
    await backend.sql(*old)
    spend = await backend.spend()
    spend.submit(SpendRow(*TASK_ROWS[0]))
    assert [t.calls for t in await spend.tasks(None, None)] == [1]
    assert await spend.spent_since("key_id", "key_a", 0.0) == 1.0


# --- audit --------------------------------------------------------------------------------

def _record(i: int, key: str = "key_a", team: str | None = "x",
            status: int = 200) -> dict[str, Any]:
    return {"time": 1000.0 + i, "request_id": f"req-{i}", "trace_id": f"{i:032x}",
            "key_id": key, "team": team, "status": status, "model": "chat",
            "decisions": [{"plugin": "pii", "decision": "masked", "detail": "é ✓ 日本"}],
            "pii": {"email": i}, "cost_usd": 0.001 * i, "error_code": None}


def _strip(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("seq", "hash")}


async def test_audit_chain_from_two_processes_appending_at_once(backend: Backend) -> None:
    first, second = await backend.audit(), await backend.audit()
    assert await first.verify() == (await second.verify()) and (await first.verify()).ok
    n = 0
    for _ in range(6):
        for log in (first, second, first, second):
            for _ in range(5):
                n += 1
                log.submit(AuditRecord.from_json(_record(n, key=f"key_{n % 3}")))
        await asyncio.gather(first.flush(), second.flush(), first.flush(), second.flush())
    for log in (first, second):
        result = await log.verify()
        assert result.ok and result.records == n and result.problem is None
    rows = await second.query({}, limit=1000)
    assert len(rows) == n
    assert [r["seq"] for r in rows] == sorted((r["seq"] for r in rows), reverse=True)
    assert sorted(r["request_id"] for r in rows) == sorted(f"req-{i}" for i in range(1, n + 1))


async def test_audit_query_filters(backend: Backend) -> None:
    log = await backend.audit()
    records = [_record(1, "key_a", "x", 200), _record(2, "key_b", "y", 429),
               _record(3, "key_a", "y", 200), _record(4, "key_a", None, 500)]
    for record in records:
        log.submit(AuditRecord.from_json(record))

    async def ids(filters: dict[str, str], limit: int = 100) -> list[str]:
        return [r["request_id"] for r in await log.query(filters, limit)]

    rows = await log.query({})  # flushes first; newest first
    assert [_strip(r) for r in rows] == records[::-1]
    assert [r["seq"] for r in rows] == [4, 3, 2, 1]
    assert all(len(r["hash"]) == 64 for r in rows)
    assert await ids({"key_id": "key_a"}) == ["req-4", "req-3", "req-1"]
    assert await ids({"team": "y"}) == ["req-3", "req-2"]
    assert await ids({"status": "200"}) == ["req-3", "req-1"]
    assert await ids({"request_id": "req-2"}) == ["req-2"]
    assert await ids({"since": "1002", "until": "1004"}) == ["req-3", "req-2"]
    assert await ids({"key_id": "key_a", "status": "200"}) == ["req-3", "req-1"]
    assert await ids({"status": "abc"}) == []
    assert await ids({"limit": "1", "unknown": "x"}) == ["req-4", "req-3", "req-2", "req-1"]
    assert await ids({}, limit=2) == ["req-4", "req-3"]


AUDIT_KEY = "test-audit-key-not-a-secret"


async def test_audit_records_a_learned_router_trains_on(backend: Backend) -> None:
    """`podium router train --from-audit` reads through the store: request records whose
    features one embedder made (newest first, within a window) and the feedback given."""
    log = await backend.audit()
    router = {"strategy": "cascade", "first": "cheap", "tier": "weak", "checks": [],
              "embedder": "hashed", "features": {"embedder": "hashed"}}
    records = [_record(1, "key_a", "x", 200) | {"router": router},
               _record(2, "key_a", "x", 200),
               _record(3, "key_a", "x", 200) | {"router": {**router, "embedder": "wordllama"}},
               _record(4, "key_a", "x", 200) | {"router": router},
               {"time": 1005.0, "request_id": "req-4", "key_id": "key_a", "team": "x",
                "status": None, "event": "feedback", "score": 0.25},
               {"time": 1006.0, "request_id": "req-4", "key_id": "key_a", "team": "x",
                "status": None, "event": "feedback", "score": 0.75}]
    for record in records:
        log.submit(AuditRecord.from_json(record))
    requests, feedback = await router_outcomes(log, "hashed", None, 100)
    assert [r["request_id"] for r in requests] == ["req-4", "req-1"]
    assert requests[0]["router"] == router and feedback == {"req-4": 0.5}
    recent, _ = await router_outcomes(log, "hashed", 1002.0, 100)
    assert [r["request_id"] for r in recent] == ["req-4"]
    assert [r["request_id"] for r in (await router_outcomes(log, "hashed", None, 1))[0]] \
        == ["req-4"]


FOLLOW = "does not follow the previous record (a record was removed, inserted or reordered)"
TAMPERING = {
    "edit": (["UPDATE {t}audit SET record = replace(record, '\"pii\":{{\"email\":2}}', "
              "'\"pii\":{{\"email\":0}}') WHERE seq = 2"],
             "record seq=2 (request req-2): content does not match its hash "
             "(the record was altered, or the audit key changed)"),
    "delete": (["DELETE FROM {t}audit WHERE seq = 2"], f"record seq=3 (request req-3): {FOLLOW}"),
    "reorder": (["UPDATE {t}audit SET seq = -1 WHERE seq = 2",
                 "UPDATE {t}audit SET seq = 2 WHERE seq = 3",
                 "UPDATE {t}audit SET seq = 3 WHERE seq = -1"],
                f"record seq=2 (request req-3): {FOLLOW}"),
}


@pytest.mark.parametrize("tampering", list(TAMPERING))
async def test_audit_verify_names_the_first_bad_record(backend: Backend, tampering: str) -> None:
    log = await backend.audit()
    for i in range(1, 5):
        log.submit(AuditRecord.from_json(_record(i)))
    assert await log.verify() == VerifyResult(True, 4)
    statements, problem = TAMPERING[tampering]
    await backend.sql(*statements)
    result = await log.verify()
    assert (result.ok, result.records, result.problem) == (False, 1, problem)


async def test_audit_record_text_is_the_hashed_canonical_json(backend: Backend) -> None:
    log = await backend.audit()
    log.submit(AuditRecord.from_json(_record(1)))
    await log.flush()
    # Rewriting the record as equivalent but differently formatted JSON breaks the chain: the
    # stored text is exactly what was hashed, byte for byte.
    await backend.sql("UPDATE {t}audit SET record = replace(record, ',', ', ') WHERE seq = 1")
    assert not (await log.verify()).ok


# --- stored responses ---------------------------------------------------------------------

def _response(response_id: str, key_id: str = "key_a", *, ttl_s: float = 3600.0,
              created_at: float | None = None) -> StoredResponse:
    created = time.time() if created_at is None else created_at
    return StoredResponse(
        id=response_id, key_id=key_id, created_at=created, expires_at=created + ttl_s,
        response={"id": response_id, "object": "response", "output": [
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_text", "text": "voilà ✓ 日本"}]}]},
        items=[{"type": "message", "role": "user", "content": "hi ✓"}])


async def test_responses_put_get_delete_by_their_owner(backend: Backend) -> None:
    store, other_worker = await backend.responses(), await backend.responses()
    stored = _response("resp_1")
    await store.put(stored)
    assert await other_worker.get("resp_1", "key_a") == stored  # durable before put returns
    assert await store.get("resp_unknown", "key_a") is None
    assert await store.delete("resp_1", "key_a")
    assert await store.get("resp_1", "key_a") is None
    assert not await store.delete("resp_1", "key_a")


async def test_responses_of_another_key_look_absent(backend: Backend) -> None:
    store = await backend.responses()
    await store.put(_response("resp_1", "key_a"))
    assert await store.get("resp_1", "key_b") is None
    assert not await store.delete("resp_1", "key_b")  # and it is still there for its owner
    assert (await store.get("resp_1", "key_a")) is not None


async def test_responses_expire_and_purge_removes_only_expired(backend: Backend) -> None:
    store = await backend.responses()
    now = time.time()
    await store.put(_response("resp_old", created_at=now - 100, ttl_s=50))
    await store.put(_response("resp_new", created_at=now, ttl_s=3600))
    # Expired is absent before any sweep: a read never depends on the purge having run.
    assert await store.get("resp_old", "key_a") is None
    assert not await store.delete("resp_old", "key_a")
    assert await store.purge(now) == 1
    assert await store.purge(now) == 0
    assert (await store.get("resp_new", "key_a")) is not None
    assert await store.purge(now + 7200) == 1
    assert await store.get("resp_new", "key_a") is None


async def test_response_purge_uses_the_expiry_index(backend: Backend) -> None:
    """The purge deletes by an index range: its cost follows the expired rows, not the table."""
    store = await backend.responses()
    await store.put(_response("resp_1"))
    if backend.dsn:
        conn = await asyncpg.connect(backend.dsn)
        try:
            await conn.execute("SET enable_seqscan = off")  # tiny tables: ask for the index
            plan = "\n".join(r[0] for r in await conn.fetch(
                "EXPLAIN DELETE FROM podium_responses WHERE expires_at <= 1"))
        finally:
            await conn.close()
        assert "podium_responses_expiry" in plan, plan
        return
    db = sqlite3.connect(backend._file("podium"))
    try:
        plan = " ".join(str(r[-1]) for r in db.execute(
            "EXPLAIN QUERY PLAN DELETE FROM responses WHERE expires_at <= 1"))
    finally:
        db.close()
    assert "USING INDEX responses_expiry" in plan, plan


# --- reviews ------------------------------------------------------------------------------

REQUEST = {"model": "chat", "messages": [{"role": "user", "content": "wire 10k€ to ✓"}]}


def _held(request_id: str) -> Review:
    return Review.pending(rule="payments", request_id=request_id, key_id="key_abc",
                          team="search", model="chat", data_class="confidential",
                          request=REQUEST, answer=ANSWER)


ANSWER = {"id": "chatcmpl-1", "object": "chat.completion",
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "done"}}]}


async def test_reviews_hold_get_list_decide(backend: Backend) -> None:
    queue = await backend.reviews()
    held = _held("req-1")
    await queue.hold(held)
    await asyncio.sleep(0.002)
    later = _held("req-2")
    await queue.hold(later)
    first, second = held.id, later.id
    assert first.startswith("rev_") and first != second

    review = await queue.get(first)
    assert review is not None
    assert (review.id, review.status, review.rule, review.request_id, review.key_id,
            review.team, review.model, review.data_class) == (
        first, "pending", "payments", "req-1", "key_abc", "search", "chat", "confidential")
    assert review.request == REQUEST and review.answer == ANSWER
    assert (review.reviewer, review.comment, review.decided_at) == (None, None, None)
    assert await queue.get("rev_unknown") is None

    assert [r.id for r in await queue.list(None)] == [first, second]
    assert [r.id for r in await queue.list("pending")] == [first, second]

    approved = await queue.decide(first, True, "bob", "fine")
    assert approved is not None
    assert (approved.status, approved.reviewer, approved.comment) == ("approved", "bob", "fine")
    assert approved.decided_at is not None and approved.answer == ANSWER
    assert await queue.get(first) == approved
    rejected = await queue.decide(second, False, "eve", None)
    assert rejected is not None and (rejected.status, rejected.comment) == ("rejected", None)

    with pytest.raises(BadRequest) as err:
        await queue.decide(first, False, "eve", "too late")
    assert err.value.code == "review_already_decided" and "approved" in err.value.message
    assert await queue.decide("rev_unknown", True, "bob", None) is None
    assert [r.id for r in await queue.list("pending")] == []
    assert [r.id for r in await queue.list("approved")] == [first]
    assert [r.id for r in await queue.list("rejected")] == [second]
    assert (await queue.get(first)) == approved  # the late decision changed nothing


async def test_reviews_across_processes_decided_once(backend: Backend) -> None:
    first, second = await backend.reviews(), await backend.reviews()
    held = _held("req-1")
    await first.hold(held)
    review_id = held.id
    seen = await second.get(review_id)
    assert seen is not None and seen.status == "pending"
    assert [r.id for r in await second.list("pending")] == [review_id]

    outcomes = await asyncio.gather(first.decide(review_id, True, "bob", None),
                                    second.decide(review_id, False, "eve", None),
                                    return_exceptions=True)
    decided = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BadRequest)]
    assert len(decided) == 1 and len(refused) == 1, outcomes
    assert refused[0].code == "review_already_decided"
    assert await first.get(review_id) == await second.get(review_id) == decided[0]


async def test_a_gateway_runs_on_this_backend(backend: Backend, upstream: Any,
                                              make_gateway: Any) -> None:
    """End to end: admin key creation, a model call, spend and audit, on each backend."""
    import aiohttp

    from tests.conftest import ADMIN, base_config

    cfg = base_config(upstream.url)
    cfg["admin_keys"] = [{"key": ADMIN, "name": "ops"}]
    if backend.name == "postgres":
        cfg["storage"] = {"backend": "postgres", "dsn": backend.dsn}
    gw = await make_gateway(cfg)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    base = gw.url.removesuffix("/v1")
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/admin/keys", json={"name": "e2e"},
                                headers=admin) as resp:
            created = await resp.json()
        answer = await gw.client(created["key"]).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content.startswith("Simulated answer")
        async with session.get(base + "/admin/spend?group_by=key", headers=admin) as resp:
            [row] = (await resp.json())["data"]
        async with session.get(base + "/admin/audit", headers=admin) as resp:
            [record] = (await resp.json())["data"]
        async with session.delete(base + f"/admin/keys/{created['id']}",
                                  headers=admin) as resp:
            assert resp.status == 200
    assert row["key"] == created["id"] and row["succeeded"] == 1
    assert record["key_id"] == created["id"] and record["status"] == 200
    assert await gw.gateway.governance.audit.verify() == VerifyResult(True, 1)


# --- config versions ----------------------------------------------------------------------

def _draft(content: str, action: str = "reload", rollback_of: int | None = None) -> ConfigVersion:
    return ConfigVersion(number=0, digest=f"digest-of-{content}", loaded_at=1000.0,
                         loaded_by="admin ops", action=action, source="/etc/podium.yaml",
                         content=content, rollback_of=rollback_of)


async def test_config_versions_number_each_new_text_once(backend: Backend) -> None:
    first, second = await backend.versions(), await backend.versions()  # two processes
    assert await first.latest() is None and await first.history() == []
    v1 = await first.record(_draft("a: 1 ✓", action="start"))
    assert (v1.number, v1.content, v1.action, v1.restorable) == (1, "a: 1 ✓", "start", True)
    assert await second.record(_draft("a: 1 ✓")) == v1      # the same text: the same version
    v2 = await second.record(_draft("a: 2"))
    assert v2.number == 2 and await first.latest() == v2
    # A rollback is a new version with the old text: numbers only ever grow.
    v3 = await first.record(_draft("a: 1 ✓", action="rollback", rollback_of=1))
    assert (v3.number, v3.rollback_of, v3.digest) == (3, 1, v1.digest)
    assert await second.get(1) == v1 and await second.get(9) is None
    assert [v.number for v in await second.history()] == [3, 2, 1]
    assert [v.number for v in await second.history(limit=2)] == [3, 2]


async def test_config_versions_agree_when_recorded_at_once(backend: Backend) -> None:
    """Workers loading the same file at the same moment share one number; different texts
    never share one."""
    stores = [await backend.versions() for _ in range(3)]
    same = await asyncio.gather(*(s.record(_draft("same")) for s in stores for _ in range(3)))
    assert {v.number for v in same} == {1}
    others = await asyncio.gather(*(s.record(_draft(f"text {i}"))
                                    for i, s in enumerate(stores)))
    assert sorted(v.number for v in others) == [2, 3, 4]
    history = await stores[0].history()
    assert [v.number for v in history] == [4, 3, 2, 1]
    assert len({v.digest for v in history}) == 4


# --- shadow comparisons --------------------------------------------------------------------

def _pair(i: int, rule: str = "support", candidate: str = "cheap", **kw: Any) -> ShadowPair:
    return ShadowPair(**{
        "ts": 2000.0 + i, "request_id": f"req-{i}", "rule": rule, "primary": "dear",
        "candidate": candidate, "status": "ok", "primary_cost": 0.01, "candidate_cost": 0.002,
        "primary_latency_s": 1.0, "candidate_latency_s": 0.5, "primary_passed": True,
        "candidate_passed": True, "similarity": 0.9, "agreed": True,
        "candidate_cheaper": True, "features": '{"embedder": "hashed"}', "embedder": "hashed",
        **kw})


SHADOW_PAIRS = [
    _pair(1), _pair(2, agreed=False, similarity=0.1, candidate_passed=False,
                    candidate_check="the model refused"),
    _pair(3, status="error", error="timeout", candidate_cost=0.0, candidate_latency_s=2.0,
          candidate_passed=None, similarity=None, agreed=None),
    _pair(4, judge_score=0.75, judge_cost=0.001, candidate_latency_s=1.5),
    _pair(5, candidate="other", primary_cost=0.02),
    _pair(6, rule="billing"),
]


async def test_shadow_pairs_round_trip_and_report(backend: Backend) -> None:
    store = await backend.shadow()
    for pair in SHADOW_PAIRS:
        store.submit(pair)
    stored = await store.pairs(None, None)                # flushes first; newest first
    assert stored == SHADOW_PAIRS[::-1]
    assert [p.request_id for p in await store.pairs("support", 2002.0)] == \
        ["req-5", "req-4", "req-3", "req-2"]
    assert [p.request_id for p in await store.pairs(None, None, limit=2)] == ["req-6", "req-5"]
    report = {(r["rule"], r["candidate"]): r for r in await store.report(None, None)}
    assert list(report) == [("billing", "cheap"), ("support", "cheap"), ("support", "other")]
    cheap = report[("support", "cheap")]
    assert (cheap["trials"], cheap["answered"], cheap["errors"], cheap["agreed"]) == (4, 3, 1, 2)
    assert cheap["error_rate"] == 0.25 and cheap["agreement_rate"] == pytest.approx(2 / 3, 1e-5)
    assert cheap["primary_pass_rate"] == 1.0
    assert cheap["candidate_pass_rate"] == pytest.approx(2 / 3, abs=1e-6)
    assert cheap["primary_cost_usd"] == pytest.approx(0.01)
    assert cheap["candidate_cost_usd"] == pytest.approx(0.002)
    assert cheap["cost_ratio"] == pytest.approx(0.2)
    assert cheap["candidate_latency_s"] == pytest.approx((0.5 + 0.5 + 1.5) / 3, abs=1e-6)
    assert cheap["latency_ratio"] == pytest.approx(2.5 / 3, abs=1e-4)
    assert (cheap["judged"], cheap["mean_judge_score"]) == (1, 0.75)
    assert cheap["judge_cost_usd"] == pytest.approx(0.001)
    assert report[("support", "other")]["primary_cost_usd"] == pytest.approx(0.02)
    only = await store.report("billing", None)
    assert [(r["rule"], r["trials"]) for r in only] == [("billing", 1)]
    assert await store.report(None, 9999.0) == []
