"""The one place that opens storage: the durable stores and the shared state the config names.

Each backend's client library (asyncpg, redis) is imported only when a config names that
backend, so an embedded gateway never pays for loading the others.
"""

from __future__ import annotations

from gateway.config import GatewayConfig
from gateway.storage.contracts import SharedState, Stores
from gateway.storage.keystore import KeyStore
from gateway.storage.memory_state import MemoryState
from gateway.storage.responses import ResponseLog
from gateway.storage.sqlite import AuditLog, ReviewQueue, SpendLedger


def open_stores(cfg: GatewayConfig) -> Stores:
    """The durable stores (not yet started)."""
    storage = cfg.storage
    if storage.backend == "postgres":
        from gateway.storage import postgres  # asyncpg: only for a config that names it

        if storage.dsn is None:
            raise ValueError("storage.backend postgres needs 'dsn'")  # the config checks it
        dsn = storage.dsn.get_secret_value()
        return Stores(keys=postgres.PgKeyStore(dsn), spend=postgres.PgSpendLedger(dsn),
                      audit=postgres.PgAuditLog(dsn) if cfg.audit.enabled else None,
                      reviews=postgres.PgReviewQueue(dsn),
                      responses=postgres.PgResponseLog(dsn))
    path = storage.path
    return Stores(keys=KeyStore(cfg.key_store.path), spend=SpendLedger(path),
                  audit=AuditLog(cfg.audit.path or path) if cfg.audit.enabled else None,
                  reviews=ReviewQueue(path), responses=ResponseLog(path))


def open_state(cfg: GatewayConfig) -> SharedState:
    """This process's memory, or Redis for a fleet."""
    if cfg.state.backend == "redis":
        from gateway.storage.redis_state import RedisState  # redis: only when named

        return RedisState.from_config(cfg)
    return MemoryState.with_cache(cfg.cache.max_entries, cfg.cache.max_bytes)
