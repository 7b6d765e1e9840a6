"""What storage promises, as contracts; the backends are elsewhere in this package.

Durable stores (key store, spend ledger, audit trail, review queue, stored responses): SQLite
is the embedded default (one file, nothing to run), PostgreSQL (`storage.backend: postgres`)
serves several workers or machines. Both pass one contract suite (`tests/test_store_contract.py`).
Every method is async, so a networked backend never blocks the event loop; the SQLite ones are fast
enough to answer inline.

Shared state (rate-limit windows, budget reservations and spend, the response cache, breaker
state): what workers and machines must agree on. `MemoryState` keeps it in the process,
`RedisState` in Redis for a fleet. `backends.py` opens whichever the config names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.storage.audit_chain import VerifyResult
from gateway.storage.records import (
    AuditRecord,
    ConfigVersion,
    DashboardSession,
    Review,
    ShadowPair,
    SpendRow,
    StoredKey,
    StoredResponse,
    TaskTotals,
)
from plugins.settings import Limits

WINDOW_S = 60.0                      # the length of every rate-limit window ...
WINDOW_BUCKETS = 60                  # ... counted in 60 one-second buckets
# A reservation lapses if never settled (a worker died mid-request); longer than any request.
# Reservations are counted in 60 buckets of a minute: one lapses 59 to 60 minutes after it
# was made, with no per-request entry to scan or expire.
RESERVATION_TTL_S = 3600.0
RESERVATION_BUCKETS = 60


class Store(Protocol):
    async def start(self) -> None:
        """Connect and create the schema if missing; called once at startup."""
        ...

    async def close(self) -> None:
        """Flush anything buffered and disconnect; called once at shutdown."""
        ...


class KeyStoreBackend(Store, Protocol):
    async def find(self, digest: str) -> StoredKey | None:
        """The active key with this sha256 digest; a revocation is seen on the next call."""
        ...

    async def create(self, name: str, team: str | None, user: str | None,
                     models: list[str] | None,
                     limits: Limits | None = None) -> tuple[StoredKey, str]:
        """A new key and its raw value (returned once; only the digest is stored), with its
        own rate limits and budget, if any."""
        ...

    async def list(self) -> list[StoredKey]:
        """Every key, revoked ones included, oldest first."""
        ...

    async def revoke(self, key_id: str) -> bool:
        """Revoke an active key; False if there is none with this id."""
        ...


class SessionStore(Store, Protocol):
    """Dashboard sessions, server side: a cookie is a random token, stored only as its sha256,
    so a session exists exactly as long as its row (logout deletes it)."""

    async def open(self, digest: str, session: DashboardSession) -> None:
        """Record a new session under the sha256 of its cookie."""
        ...

    async def find(self, digest: str) -> DashboardSession | None:
        """The live session with this digest; None once it has ended or expired."""
        ...

    async def end(self, digest: str) -> bool:
        """End a session now (logout); False if there was none."""
        ...


class SpendStore(Store, Protocol):
    def submit(self, row: SpendRow) -> None:
        """Queue one spend row; written in batches."""
        ...

    async def flush(self) -> None:
        """Write every queued row now."""
        ...

    async def has(self, request_id: str) -> bool:
        """Whether a row of this request was written (queued ones not included)."""
        ...

    async def spent_since(self, column: str, value: str, since: float) -> float:
        """Total cost where `column` ("key_id" or "team") = value and ts >= since."""
        ...

    async def report(self, group_by: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]]:
        """Spend grouped by key, team, model, deployment or day (flushes first)."""
        ...

    async def tasks(self, since: float | None, until: float | None,
                    limit: int = 1_000_000) -> list[TaskTotals]:
        """Each task's calls summed, for calls started in [since, until), the newest tasks
        first (flushes first). A task is its `SpendRow.task`: its owner and its id."""
        ...


class AuditStore(Store, Protocol):
    def submit(self, record: AuditRecord) -> None:
        """Queue one record; appended to the hash chain in batches."""
        ...

    async def flush(self) -> None:
        """Append every queued record now."""
        ...

    async def query(self, filters: Mapping[str, str], limit: int = 100) -> list[dict[str, Any]]:
        """Records newest first, filtered by key_id, team, status, request_id, since, until,
        trace_id, event, and router_embedder (the embedder of the features kept for the
        learned router; see routing/learned/outcomes.py)."""
        ...

    async def has(self, request_id: str) -> bool:
        """Whether a record of this request was appended (queued ones not included)."""
        ...

    async def verify(self) -> VerifyResult:
        """Walk the chain from the first record; name the first one that does not fit; check
        that it reaches the checkpoint (see audit_chain.py)."""
        ...


class ReviewStore(Store, Protocol):
    async def hold(self, review: Review) -> None:
        """Store a held answer durably, before the caller is told."""
        ...

    async def get(self, review_id: str) -> Review | None:
        """One review, or None."""
        ...

    async def list(self, status: str | None) -> list[Review]:
        """Reviews with this status (None: all), oldest first."""
        ...

    async def decide(self, review_id: str, approve: bool, reviewer: str,
                     comment: str | None) -> Review | None:
        """Approve or reject a pending review; None if unknown; BadRequest if decided."""
        ...


class ResponseStore(Store, Protocol):
    """Responses API answers and their conversations, per key, until they expire. A response
    that belongs to another key, has expired or never existed looks the same to every method,
    so that a caller can never learn whether someone else's id exists."""

    async def put(self, stored: StoredResponse) -> None:
        """Keep a response; durable before it returns (the client may continue from it at
        once, from another worker)."""
        ...

    async def get(self, response_id: str, key_id: str) -> StoredResponse | None:
        """This key's response, if it has not expired; else None. One indexed lookup."""
        ...

    async def delete(self, response_id: str, key_id: str) -> bool:
        """Remove this key's unexpired response; False if there is none."""
        ...

    async def purge(self, now: float) -> int:
        """Remove every response expired by `now` (an index range, never a table scan), off
        the request path; returns how many."""
        ...


class ConfigVersionStore(Store, Protocol):
    async def record(self, draft: ConfigVersion) -> ConfigVersion:
        """The version for `draft`'s content: the latest one if its digest is the same, else a
        new one numbered one above the latest. Atomic across processes, so workers loading
        the same file at once agree on one number."""
        ...

    async def latest(self) -> ConfigVersion | None:
        """The newest version: the one every process of the fleet converges on."""
        ...

    async def get(self, number: int) -> ConfigVersion | None:
        """One version, or None."""
        ...

    async def history(self, limit: int = 100) -> list[ConfigVersion]:
        """The newest `limit` versions, newest first."""
        ...


class ShadowStore(Store, Protocol):
    def submit(self, pair: ShadowPair) -> None:
        """Queue one comparison; written in batches."""
        ...

    async def flush(self) -> None:
        """Write every queued comparison now."""
        ...

    async def pairs(self, rule: str | None, since: float | None,
                    limit: int = 10_000) -> list[ShadowPair]:
        """Comparisons, newest first (flushes first); of one rule, since a time."""
        ...

    async def report(self, rule: str | None, since: float | None) -> list[dict[str, Any]]:
        """Per rule and candidate: trials, errors, agreement, check pass rates, cost and
        latency against the primary (flushes first); see gateway/storage/shadow_pairs.py."""
        ...


@dataclass
class Stores:
    """The durable stores of one process, as the config names them (not yet started)."""
    keys: KeyStoreBackend
    spend: SpendStore
    audit: AuditStore | None
    reviews: ReviewStore
    responses: ResponseStore
    sessions: SessionStore            # beside the keys: where they are shared, sessions are


class CacheStore(Protocol):
    async def get(self, key: str) -> bytes | None:
        """The stored answer for `key`, or None (absent or expired)."""
        ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        """Store `value` for `ttl_s` seconds; may evict older entries to stay within bounds."""
        ...


@dataclass(frozen=True, slots=True)
class WindowCheck:
    key: str                 # e.g. "key:key_ab12:rpm"
    limit: float
    amount: float            # 1 for requests, reserved tokens for tokens


@dataclass(frozen=True, slots=True)
class Admission:
    wait_s: float            # 0.0: admitted; else seconds until it would fit
    full: str | None         # the key of the window that is full, when refused
    bucket: int | None       # where the amounts were counted, when admitted (for settling)


@dataclass(frozen=True, slots=True)
class BudgetClaim:
    scope: str               # e.g. "team:support:month"
    budget_usd: float
    period_start: float      # unix seconds
    period_end: float        # unix seconds; math.inf for a "total" budget
    load_spent: Callable[[], Awaitable[float]]  # durable spend since period_start


@dataclass(frozen=True, slots=True)
class BudgetReservation:
    """What one request holds against its budgets, and where, so settling releases exactly it."""
    bucket: int
    amount: float


@dataclass(frozen=True, slots=True)
class BudgetRefusal:
    claim: BudgetClaim       # the budget that has no room
    spent: float             # its spend this period
    reserved: float          # held by other requests in flight


class SharedState(Protocol):
    @property
    def cache(self) -> CacheStore:
        """The response cache that lives where this state does."""
        ...

    async def admit(self, home: str, checks: list[WindowCheck]) -> Admission:
        """Count the request in every window if all have room; otherwise count nothing and
        say how long until it would fit, and which window is full. `home` is the scope every
        window of one request is stored with (its team, else its key): one Redis Cluster slot."""
        ...

    async def settle_windows(self, home: str, keys: list[str], bucket: int,
                             delta: float) -> None:
        """Correct what an admission counted in these windows by `delta` (a tpm refund is
        negative), in the bucket it went into; nothing if that bucket has left the window."""
        ...

    async def reserve(self, home: str, claims: list[BudgetClaim],
                      amount: float) -> BudgetReservation | BudgetRefusal:
        """Reserve `amount` under every claim if all have room; otherwise reserve nothing and
        name the claim that is full. A reservation never settled (a crashed worker) lapses
        after RESERVATION_TTL_S, without a scan."""
        ...

    async def settle(self, home: str, claims: list[BudgetClaim],
                     reservation: BudgetReservation | None, cost: float) -> None:
        """Release `reservation` (if any) and add the request's real cost to spent."""
        ...

    async def standing(self, home: str, claim: BudgetClaim) -> tuple[float, float]:
        """(spent, reserved) under one budget now, as enforcement sees them."""
        ...

    async def breaker_updates(self, dep_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        """Breaker states of these deployments published by other processes: deployment id →
        (state, open until as unix seconds)."""
        ...

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        """Tell other processes a breaker changed."""
        ...

    def status(self) -> tuple[bool, str]:
        """(healthy, description) for /readyz."""
        ...

    async def close(self) -> None:
        """Disconnect; called once at shutdown."""
        ...
