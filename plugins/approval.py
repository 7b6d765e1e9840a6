"""Human approval: answers to matching requests are held until a reviewer approves them.

The model is called; its answer is stored with the request and the caller gets 403
`review_pending` with a `review_id` (403 rather than 409/429, which the OpenAI SDKs retry on
their own, creating duplicate holds). Reviewers approve or reject through `/admin/reviews`; the
caller fetches the outcome from `GET /v1/reviews/{id}` with the same key. Held items are in
SQLite, written before the caller is answered, so they survive a restart; nothing held is ever
released without an approval.
"""

from __future__ import annotations

import re
import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from gateway.errors import BadRequest, ReviewPending
from gateway.storage.batch import sqlite_connect
from plugins.base import BasePlugin, Outcome, RequestContext
from plugins.settings import ApprovalRule
from routing.rules import RequestFacts

if TYPE_CHECKING:
    from gateway.storage.contracts import ReviewStore

_SCHEMA = """
CREATE TABLE IF NOT EXISTS reviews (
    id TEXT PRIMARY KEY, created_at REAL NOT NULL, status TEXT NOT NULL, rule TEXT,
    request_id TEXT, key_id TEXT, team TEXT, model TEXT, data_class TEXT,
    request TEXT NOT NULL, answer TEXT NOT NULL,
    reviewer TEXT, comment TEXT, decided_at REAL
)"""
_COLUMNS = ("id", "created_at", "status", "rule", "request_id", "key_id", "team", "model",
            "data_class", "request", "answer", "reviewer", "comment", "decided_at")


@dataclass(frozen=True)
class Review:
    id: str
    created_at: float
    status: str
    rule: str
    request_id: str
    key_id: str
    team: str | None
    model: str
    data_class: str
    request: dict[str, Any]
    answer: dict[str, Any]
    reviewer: str | None
    comment: str | None
    decided_at: float | None

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "review", "status": self.status, "rule": self.rule,
                "request_id": self.request_id, "key_id": self.key_id, "team": self.team,
                "model": self.model, "data_class": self.data_class,
                "created_at": int(self.created_at), "messages": self.request.get("messages"),
                "answer": self.answer, "reviewer": self.reviewer, "comment": self.comment,
                "decided_at": int(self.decided_at) if self.decided_at else None}


class ReviewQueue:
    def __init__(self, path: str) -> None:
        self._path = path
        self._db: sqlite3.Connection | None = None

    async def start(self) -> None:
        self._db = sqlite_connect(self._path, _SCHEMA)

    async def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def hold(self, ctx: RequestContext, rule: str, answer: dict[str, Any]) -> str:
        row = new_review_row(ctx, rule, answer)
        review_id = row[0]
        # Written before the caller hears of it, so a held answer survives a crash; one small
        # row in WAL mode, on the loop thread, so reads never race a writer thread.
        self._conn().execute(f"INSERT INTO reviews VALUES ({','.join('?' * len(row))})", row)
        return review_id

    async def get(self, review_id: str) -> Review | None:
        row = self._conn().execute("SELECT * FROM reviews WHERE id = ?",
                                   (review_id,)).fetchone()
        return _review(row) if row else None

    async def list(self, status: str | None) -> list[Review]:
        sql, args = "SELECT * FROM reviews", tuple[str, ...]()
        if status:
            sql, args = sql + " WHERE status = ?", (status,)
        return [_review(r) for r in self._conn().execute(sql + " ORDER BY created_at", args)]

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


def new_review_row(ctx: RequestContext, rule: str, answer: dict[str, Any]) -> tuple[Any, ...]:
    """A pending review as a row in `_COLUMNS` order (every backend stores the same)."""
    return (f"rev_{uuid.uuid4().hex}", time.time(), "pending", rule, ctx.request_id,
            ctx.principal.key_id, ctx.principal.team, ctx.model, ctx.data_class,
            orjson.dumps(dict(ctx.body)).decode(), orjson.dumps(answer).decode(),
            None, None, None)


def _review(row: tuple[Any, ...]) -> Review:
    values = dict(zip(_COLUMNS, row, strict=True))
    values["request"] = orjson.loads(values["request"])
    values["answer"] = orjson.loads(values["answer"])
    return Review(**values)


def _one_of(expected: str | list[str] | None, actual: str | None) -> bool:
    return expected is None or actual in ([expected] if isinstance(expected, str) else expected)


@dataclass(frozen=True)
class _Matcher:
    rule: ApprovalRule
    message_re: re.Pattern[str] | None

    def matches(self, facts: RequestFacts, data_class: str) -> bool:
        m = self.rule.match
        return (_one_of(m.team, facts.team) and _one_of(m.key, facts.key)
                and _one_of(m.model, facts.model) and _one_of(m.data_class, data_class)
                and (m.has_tools is None or m.has_tools == facts.has_tools)
                and all(facts.headers.get(k.lower()) == v for k, v in m.headers.items())
                and (self.message_re is None
                     or self.message_re.search(facts.last_user_message) is not None))


class ApprovalPlugin(BasePlugin):
    name = "approval"

    def __init__(self, rules: Iterable[ApprovalRule], queue: ReviewStore) -> None:
        self._rules = [_Matcher(r, re.compile(r.match.last_user_message)
                                if r.match.last_user_message else None) for r in rules]
        self._queue = queue

    async def on_request(self, ctx: RequestContext) -> None:
        if ctx.facts is None:
            return
        for matcher in self._rules:
            if matcher.matches(ctx.facts, ctx.data_class):
                ctx.hold = matcher.rule.name
                ctx.decide(self.name, "hold", matcher.rule.name)
                return

    async def on_response(self, ctx: RequestContext, outcome: Outcome) -> None:
        if ctx.hold is None or outcome.answer is None:
            return
        outcome.review_id = await self._queue.hold(ctx, ctx.hold, outcome.answer)
        raise ReviewPending(outcome.review_id)
