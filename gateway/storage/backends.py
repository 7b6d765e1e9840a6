"""The one place that opens storage: the durable stores and the shared state the config names.

Each backend's client library (asyncpg, redis) is imported only when a config names that
backend, so an embedded gateway never pays for loading the others.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import GatewayConfig
from gateway.storage.config_versions import ConfigVersions
from gateway.storage.contracts import ConfigVersionStore, ShadowStore, SharedState, Stores
from gateway.storage.keystore import KeyStore
from gateway.storage.memory_state import MemoryState
from gateway.storage.responses import ResponseLog
from gateway.storage.sessions import SqliteSessions
from gateway.storage.shadow_pairs import ShadowPairs
from gateway.storage.sqlite import ReviewQueue, SpendLedger
from gateway.storage.sqlite_audit import AuditLog


def open_stores(cfg: GatewayConfig) -> Stores:
    """The durable stores (not yet started)."""
    storage = cfg.storage
    if storage.backend == "postgres":
        from gateway.storage import postgres, postgres_audit  # asyncpg: only when named
        from gateway.storage.postgres_sessions import PgSessions

        if storage.dsn is None:
            raise ValueError("storage.backend postgres needs 'dsn'")  # the config checks it
        dsn = storage.dsn.get_secret_value()
        return Stores(keys=postgres.PgKeyStore(dsn), spend=postgres.PgSpendLedger(dsn),
                      audit=postgres_audit.PgAuditLog(dsn, _hmac_key(cfg))
                      if cfg.audit.enabled else None,
                      reviews=postgres.PgReviewQueue(dsn), sessions=PgSessions(dsn),
                      responses=postgres.PgResponseLog(dsn))
    path = storage.path
    return Stores(keys=KeyStore(cfg.key_store.path), spend=SpendLedger(path),
                  audit=AuditLog(cfg.audit.path or path, _hmac_key(cfg))
                  if cfg.audit.enabled else None,
                  reviews=ReviewQueue(path), responses=ResponseLog(path),
                  sessions=SqliteSessions(cfg.key_store.path))


def open_versions(cfg: GatewayConfig) -> ConfigVersionStore:
    """The config version history (not yet started): where the durable stores are."""
    if cfg.storage.backend == "postgres":
        from gateway.storage.postgres_management import PgConfigVersions

        return PgConfigVersions(_dsn(cfg))
    return ConfigVersions(cfg.storage.path)


def open_shadow_store(cfg: GatewayConfig) -> ShadowStore:
    """The shadow trials' comparisons (not yet started): where the durable stores are."""
    if cfg.storage.backend == "postgres":
        from gateway.storage.postgres_management import PgShadowPairs

        return PgShadowPairs(_dsn(cfg))
    return ShadowPairs(cfg.storage.path)


def _dsn(cfg: GatewayConfig) -> str:
    if cfg.storage.dsn is None:
        raise ValueError("storage.backend postgres needs 'dsn'")  # the config checks it
    return cfg.storage.dsn.get_secret_value()


def journal_dir(cfg: GatewayConfig) -> Path | None:
    """Where answered requests are journaled until accounted for (storage/journal.py): the
    config's `storage.journal_dir`, else beside the SQLite file (`<path>.answers`: not
    `-journal`, SQLite's own name) or `./podium-answers` with PostgreSQL; None for an in-memory
    database, which a kill loses anyway."""
    storage = cfg.storage
    if storage.journal_dir is not None:
        return Path(storage.journal_dir)
    if storage.backend == "postgres":
        return Path("podium-answers")
    return None if storage.path == ":memory:" else Path(f"{storage.path}.answers")


def _hmac_key(cfg: GatewayConfig) -> str | None:
    key = cfg.audit.hmac_key
    return key.get_secret_value() if key is not None else None


def open_state(cfg: GatewayConfig) -> SharedState:
    """This process's memory, or Redis for a fleet."""
    if cfg.state.backend == "redis":
        from gateway.storage.redis_state import RedisState  # redis: only when named

        return RedisState.from_config(cfg)
    return MemoryState.with_cache(cfg.cache.max_entries, cfg.cache.max_bytes)
