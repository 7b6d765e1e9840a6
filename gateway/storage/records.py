"""The typed records the durable stores keep, the same for every backend.

    SpendRow      one request's spend, a row of the spend ledger
    AuditRecord   one entry of the hash-chained audit trail (built in plugins/audit.py)
    Review        an answer held for human approval, and its decision
    StoredKey     a virtual key created through the admin API (never the raw key)
    StoredResponse  a Responses API answer and the conversation up to it, owned by one key

Each knows its own row layout, so a backend only says where the rows go.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field, replace
from typing import Any

import orjson

from gateway.pipeline.identity import digest_of, key_id_for
from plugins.settings import Limits


@dataclass(frozen=True, slots=True)
class SpendRow:
    """In the ledger's column order. The last five say which task and workflow the request
    belongs to (gateway/pipeline/tasks.py) and how it went, for the per-task KPIs."""
    ts: float
    request_id: str
    key_id: str
    key_name: str
    team: str | None
    model: str
    deployment: str | None
    status: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    task: str | None = None              # `<home> <task id>`: a task is its caller's own
    workflow: str | None = None
    escalations: int = 0
    held: int = 0                        # 1: its answer was held for human approval
    duration_s: float = 0.0              # from the request's start to its accounting

    def values(self) -> tuple[Any, ...]:
        return astuple(self)


@dataclass(frozen=True, slots=True)
class TaskTotals:
    """One task's calls, summed from the ledger (see `SpendStore.tasks`)."""
    task: str                            # `<home> <task id>`
    workflow: str
    calls: int
    failures: int                        # calls not answered (a held one is no failure)
    escalations: int
    approvals: int                       # calls held for human approval
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    first_at: float                      # the first call's start (unix seconds)
    last_at: float                       # the last call's end
    last_status: int                     # of the call that started last (held: 200)

    @property
    def ended_in_error(self) -> bool:
        return self.last_status != 200

    @classmethod
    def from_row(cls, row: Sequence[Any], last_status: int) -> TaskTotals:
        """A task's row of the ledger's per-task query (the same columns in every backend)."""
        return cls(task=row[0], workflow=row[1] or "none", calls=row[2], failures=row[3],
                   escalations=row[4] or 0, approvals=row[5] or 0, prompt_tokens=row[6] or 0,
                   completion_tokens=row[7] or 0, cost_usd=row[8] or 0.0, first_at=row[9],
                   last_at=row[10], last_status=last_status)

    def public(self) -> dict[str, Any]:
        home, _, task = self.task.partition(" ")
        return {"task": task, "owner": home, "workflow": self.workflow, "calls": self.calls,
                "failures": self.failures, "escalations": self.escalations,
                "approvals": self.approvals, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens,
                "cost_usd": round(self.cost_usd, 10), "first_at": self.first_at,
                "last_at": self.last_at,
                "duration_s": round(max(0.0, self.last_at - self.first_at), 6),
                "ended_in_error": self.ended_in_error}


# The columns of the audit table besides the record itself: indexed, so filters are fast.
_AUDIT_COLUMNS = ("time", "request_id", "key_id", "team", "status")


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditRecord:
    """One audit entry: the indexed fields, typed, and everything else the event records.
    What is hashed and stored is `json()` in canonical form (sorted keys)."""
    time: float
    request_id: str
    key_id: str | None
    team: str | None
    status: int | None                   # None for an event that is not a request's answer
    details: Mapping[str, Any] = field(default_factory=dict)

    def json(self) -> dict[str, Any]:
        return {"time": self.time, "request_id": self.request_id, "key_id": self.key_id,
                "team": self.team, "status": self.status, **self.details}

    def text(self) -> str:
        """The canonical JSON that the hash chain covers, byte for byte."""
        return orjson.dumps(self.json(), option=orjson.OPT_SORT_KEYS).decode()

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> AuditRecord:
        return cls(time=record["time"], request_id=record["request_id"],
                   key_id=record.get("key_id"), team=record.get("team"),
                   status=record.get("status"),
                   details={k: v for k, v in record.items() if k not in _AUDIT_COLUMNS})


@dataclass(frozen=True)
class Review:
    id: str
    created_at: float
    status: str                          # pending | approved | rejected
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

    # The table's columns, in the order of the fields above.
    COLUMNS = ("id", "created_at", "status", "rule", "request_id", "key_id", "team", "model",
               "data_class", "request", "answer", "reviewer", "comment", "decided_at")

    @classmethod
    def pending(cls, *, rule: str, request_id: str, key_id: str, team: str | None, model: str,
                data_class: str, request: Mapping[str, Any], answer: dict[str, Any]) -> Review:
        return cls(id=f"rev_{uuid.uuid4().hex}", created_at=time.time(), status="pending",
                   rule=rule, request_id=request_id, key_id=key_id, team=team, model=model,
                   data_class=data_class, request=dict(request), answer=answer, reviewer=None,
                   comment=None, decided_at=None)

    def row(self) -> tuple[Any, ...]:
        """The review as a row in `COLUMNS` order, JSON as text (every backend stores it so)."""
        values = [getattr(self, name) for name in self.COLUMNS]
        values[9], values[10] = (orjson.dumps(self.request).decode(),
                                 orjson.dumps(self.answer).decode())
        return tuple(values)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> Review:
        values = dict(zip(cls.COLUMNS, row, strict=True))
        values["request"] = orjson.loads(values["request"])
        values["answer"] = orjson.loads(values["answer"])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "object": "review", "status": self.status, "rule": self.rule,
                "request_id": self.request_id, "key_id": self.key_id, "team": self.team,
                "model": self.model, "data_class": self.data_class,
                "created_at": int(self.created_at), "messages": self.request.get("messages"),
                "answer": self.answer, "reviewer": self.reviewer, "comment": self.comment,
                "decided_at": int(self.decided_at) if self.decided_at else None}


@dataclass(frozen=True, slots=True)
class DashboardSession:
    """An operator's dashboard session (gateway/http/sessions.py)."""
    admin: str                       # the admin key's name
    key_fingerprint: str             # the first 16 hex digits of that key's sha256
    expires_at: float                # unix seconds


@dataclass(frozen=True, slots=True)
class StoredKey:
    id: str
    name: str
    team: str | None
    user: str | None
    models: tuple[str, ...] | None
    created_at: float
    revoked_at: float | None
    limits: Limits | None = None     # the key's own rpm, tpm and budget, as in `keys:`

    def public(self) -> dict[str, Any]:
        limits = self.limits or Limits()
        return {"id": self.id, "object": "key", "name": self.name, "team": self.team,
                "user": self.user, "models": list(self.models) if self.models else None,
                "rpm": limits.rpm, "tpm": limits.tpm, "budget_usd": limits.budget_usd,
                "budget_period": limits.budget_period if limits.budget_usd is not None
                else None,
                "created_at": int(self.created_at),
                "revoked_at": int(self.revoked_at) if self.revoked_at else None}

    @classmethod
    def new(cls, name: str, team: str | None, user: str | None, models: list[str] | None,
            limits: Limits | None = None) -> tuple[StoredKey, str, str]:
        """A fresh key: its record, the raw key (shown once) and the digest (stored)."""
        raw = f"sk-podium-{secrets.token_urlsafe(32)}"
        digest = digest_of(raw)
        key = cls(id=key_id_for(digest), name=name, team=team, user=user,
                  models=tuple(models) if models is not None else None,
                  created_at=time.time(), revoked_at=None, limits=limits)
        return key, raw, digest

    def row(self, digest: str) -> tuple[Any, ...]:
        """As stored, in the order of `from_row`: id, digest, name, team, user, models,
        created_at, revoked_at, limits."""
        models = orjson.dumps(list(self.models)).decode() if self.models is not None else None
        limits = (self.limits.model_dump_json(exclude_defaults=True)
                  if self.limits is not None else None)
        return (self.id, digest, self.name, self.team, self.user, models, self.created_at,
                self.revoked_at, limits)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredKey:
        models = orjson.loads(row[5]) if row[5] else None
        return cls(id=row[0], name=row[2], team=row[3], user=row[4],
                   models=tuple(models) if models is not None else None,
                   created_at=row[6], revoked_at=row[7],
                   limits=Limits.model_validate_json(row[8]) if row[8] else None)


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A response of `POST /v1/responses`, kept for `GET /v1/responses/{id}` and for a later
    request's `previous_response_id`. Self-contained: `items` is the whole conversation up to
    and including this response's output, so a response never depends on an older one that
    may have expired before it."""
    id: str
    key_id: str                          # the only caller that may read or delete it
    created_at: float
    expires_at: float
    response: dict[str, Any]             # the response object, as the client received it
    items: list[dict[str, Any]]          # Responses input items, oldest first

    COLUMNS = ("id", "key_id", "created_at", "expires_at", "response", "items")

    def row(self) -> tuple[Any, ...]:
        """In `COLUMNS` order, JSON as text (every backend stores it so)."""
        return (self.id, self.key_id, self.created_at, self.expires_at,
                orjson.dumps(self.response).decode(), orjson.dumps(self.items).decode())

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> StoredResponse:
        return cls(id=row[0], key_id=row[1], created_at=row[2], expires_at=row[3],
                   response=orjson.loads(row[4]), items=orjson.loads(row[5]))


@dataclass(frozen=True, slots=True, kw_only=True)
class ConfigVersion:
    """One config as Podium loaded it: its YAML as written (`${VAR}` references unexpanded,
    so no secret from the environment is kept), numbered in load order. Loading the same text
    as the latest version is that version again, not a new one."""
    number: int                          # 1, 2, 3 ... (0 in a draft: the store numbers it)
    digest: str                          # sha256 of `content`
    loaded_at: float
    loaded_by: str                       # "admin ops", "SIGHUP (pid 12)", "podium serve ..."
    action: str                          # start | reload | rollback
    source: str                          # the file it was read from
    content: str
    restorable: bool = True              # False: built in memory, its text not kept
    rollback_of: int | None = None       # a rollback: the version it restored

    COLUMNS = ("number", "digest", "loaded_at", "loaded_by", "action", "source", "content",
               "restorable", "rollback_of")

    def row(self) -> tuple[Any, ...]:
        """As stored, in `COLUMNS` order (booleans as integers, the same in every backend)."""
        return (self.number, self.digest, self.loaded_at, self.loaded_by, self.action,
                self.source, self.content, int(self.restorable), self.rollback_of)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ConfigVersion:
        values = dict(zip(cls.COLUMNS, row, strict=True))
        values["restorable"] = bool(values["restorable"])
        return cls(**values)

    def numbered(self, number: int) -> ConfigVersion:
        return replace(self, number=number)

    def public(self) -> dict[str, Any]:
        """What the admin API lists (never the content: see gateway/config_versions.py)."""
        return {"object": "config.version", "number": self.number, "digest": self.digest,
                "loaded_at": self.loaded_at, "loaded_by": self.loaded_by,
                "action": self.action, "source": self.source, "restorable": self.restorable,
                "rollback_of": self.rollback_of}


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowPair:
    """One shadow trial: the answer the client got (primary) and the candidate's to the same
    request, compared. Costs in USD, latencies in seconds waiting on the upstream."""
    ts: float
    request_id: str
    rule: str
    primary: str                         # the deployment that answered the client
    candidate: str                       # the deployment on trial
    status: str                          # ok | error (the candidate's call failed)
    error: str | None = None             # the candidate's error kind
    primary_cost: float = 0.0
    candidate_cost: float = 0.0
    judge_cost: float = 0.0
    primary_latency_s: float = 0.0
    candidate_latency_s: float = 0.0
    primary_passed: bool = True          # the cascade's checks on the primary's answer
    candidate_passed: bool | None = None
    primary_check: str | None = None     # why a check failed
    candidate_check: str | None = None
    similarity: float | None = None      # 0-1, word overlap of the two answers
    judge_score: float | None = None     # 0-1, the judge's grade of the candidate's answer
    agreed: bool | None = None           # the judge's verdict, else similarity >= agree_at
    candidate_cheaper: bool = False      # by the deployments' token prices
    features: str | None = None          # the prompt's recorded features (JSON), for training
    embedder: str | None = None

    COLUMNS = ("ts", "request_id", "rule", "primary_dep", "candidate", "status", "error",
               "primary_cost", "candidate_cost", "judge_cost", "primary_latency_s",
               "candidate_latency_s", "primary_passed", "candidate_passed", "primary_check",
               "candidate_check", "similarity", "judge_score", "agreed", "candidate_cheaper",
               "features", "embedder")

    def row(self) -> tuple[Any, ...]:
        """In `COLUMNS` order; booleans as integers (NULL stays NULL), in every backend."""
        values = [getattr(self, "primary" if c == "primary_dep" else c) for c in self.COLUMNS]
        return tuple(int(v) if isinstance(v, bool) else v for v in values)

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> ShadowPair:
        values = dict(zip(cls.COLUMNS, row, strict=True))
        values["primary"] = values.pop("primary_dep")
        for flag in ("primary_passed", "candidate_passed", "agreed", "candidate_cheaper"):
            if values[flag] is not None:
                values[flag] = bool(values[flag])
        return cls(**values)

    def public(self) -> dict[str, Any]:
        return asdict(self)
