"""The durable stores, as contracts, and the one place that picks their backend.

SQLite is the embedded default (one file, nothing to run). PostgreSQL (`storage.backend:
postgres`) is for several workers or machines sharing one durable state. Both backends pass one
contract suite (`tests/test_store_contract.py`). Every method is async, so a networked backend
never blocks the event loop; the SQLite ones are fast enough to answer inline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.storage.keystore import StoredKey
    from plugins.approval import Review
    from plugins.audit import VerifyResult
    from plugins.base import RequestContext
    from plugins.settings import Limits


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


class SpendStore(Store, Protocol):
    def submit(self, row: tuple[Any, ...]) -> None:
        """Queue one spend row (ts, request_id, key_id, key_name, team, model, deployment,
        status, prompt_tokens, completion_tokens, cost_usd); written in batches."""
        ...

    async def flush(self) -> None:
        """Write every queued row now."""
        ...

    async def spent_since(self, column: str, value: str, since: float) -> float:
        """Total cost where `column` ("key_id" or "team") = value and ts >= since."""
        ...

    async def report(self, group_by: str, since: float | None,
                     until: float | None) -> list[dict[str, Any]]:
        """Spend grouped by key, team, model, deployment or day (flushes first)."""
        ...


class AuditStore(Store, Protocol):
    def submit(self, record: dict[str, Any]) -> None:
        """Queue one record; appended to the hash chain in batches."""
        ...

    async def flush(self) -> None:
        """Append every queued record now."""
        ...

    async def query(self, filters: Mapping[str, str], limit: int = 100) -> list[dict[str, Any]]:
        """Records newest first, filtered by key_id, team, status, request_id, since, until."""
        ...

    async def verify(self) -> VerifyResult:
        """Walk the chain from the first record; name the first one that does not fit."""
        ...


class ReviewStore(Store, Protocol):
    async def hold(self, ctx: RequestContext, rule: str, answer: dict[str, Any]) -> str:
        """Store a held answer durably before the caller is told; returns the review id."""
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


@dataclass
class Stores:
    keys: KeyStoreBackend
    spend: SpendStore
    audit: AuditStore | None
    reviews: ReviewStore


def open_stores(cfg: GatewayConfig) -> Stores:
    """The backends the config names (not yet started)."""
    storage = cfg.storage
    if storage.backend == "postgres":
        from gateway.storage import postgres as pg_stores

        assert storage.dsn is not None
        dsn = storage.dsn.get_secret_value()
        return Stores(keys=pg_stores.PgKeyStore(dsn), spend=pg_stores.PgSpendLedger(dsn),
                      audit=pg_stores.PgAuditLog(dsn) if cfg.audit.enabled else None,
                      reviews=pg_stores.PgReviewQueue(dsn))
    from gateway.storage.keystore import KeyStore
    from plugins.approval import ReviewQueue
    from plugins.audit import AuditLog
    from plugins.budget import SpendLedger

    path = storage.path
    return Stores(keys=KeyStore(cfg.key_store.path), spend=SpendLedger(path),
                  audit=AuditLog(cfg.audit.path or path) if cfg.audit.enabled else None,
                  reviews=ReviewQueue(path))
