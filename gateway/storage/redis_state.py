"""`state.backend: redis`: one set of limits, budgets, cache and breakers for a whole fleet.

Every check-and-update is one Lua script (`redis_scripts.py`), run atomically by Redis with
Redis's own clock, so concurrent requests on different machines can neither both squeeze into
the last slot of a window nor both take the last dollar of a budget. A window is one hash of at
most 60 one-second buckets and a budget is a counter plus one hash of minute buckets of
reservations: constant keys, memory and work per scope, whatever the traffic.

Keys (`<prefix>` is `state.key_prefix`):

    <prefix>{<home>}:win:<scope>:rpm|tpm              rate-limit window (hash, expires)
    <prefix>{<home>}:budget:<scope>:<start>:spent     spend this period (seeded from the ledger)
    <prefix>{<home>}:budget:<scope>:<start>:res       reservations by minute bucket (hash)
    <prefix>cache:<digest>                            a cached answer (expires at its TTL)
    <prefix>breaker:<deployment id>                   a breaker's state (expires after a day)

`<home>` is the request's team (or its key where it has none), in braces: Redis Cluster hashes
only the part in braces, so one request's key and team windows and budgets sit in one slot and
one script can update them together. Cache entries and breakers carry no tag, so they spread
over every slot. `cluster: true` connects with redis-py's cluster client.

If Redis becomes unreachable, each call gives up after `state.timeout_s`: the cache fails open
(a miss, nothing stored); limits and budgets follow `state.fail_mode` (`open`: serve without
them; `closed`: 503 `state_unavailable`). The outage is logged (once per minute while it lasts),
reported by `/readyz`, and recovery is automatic. Spend the counters missed meanwhile (answers
served open, settles that failed) is reconciled from the durable ledger: each budget touched
during the outage has its counter reset from the ledger on its first use after Redis is back.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gateway.config import GatewayConfig
from gateway.errors import StateUnavailable
from gateway.storage import redis_scripts as lua
from gateway.storage.contracts import (
    RESERVATION_BUCKETS,
    RESERVATION_TTL_S,
    WINDOW_BUCKETS,
    WINDOW_S,
    Admission,
    BudgetClaim,
    BudgetRefusal,
    BudgetReservation,
    WindowCheck,
)

log = logging.getLogger("podium.state")
T = TypeVar("T")
Client = aioredis.Redis | RedisCluster
_LOG_EVERY_S = 60.0
_BREAKER_TTL_S = 86400                 # a deployment removed from the config leaves no trace
_TOTAL_SPENT_TTL_S = 40 * 86400        # a "total" budget's counter, renewed by every settle
_MAX_STALE = 10_000                    # budgets awaiting reconciliation after an outage
_RESERVE_WIDTH_S = RESERVATION_TTL_S / RESERVATION_BUCKETS


class RedisCache:
    def __init__(self, state: RedisState, prefix: str, max_bytes: int) -> None:
        self._state = state
        self._prefix = prefix
        self._max_bytes = max_bytes

    async def get(self, key: str) -> bytes | None:
        value = await self._state.call(lambda r: r.get(self._prefix + key), fail_open=True)
        return value if isinstance(value, bytes) else None

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        if len(value) <= self._max_bytes and ttl_s > 0:
            await self._state.call(
                lambda r: r.set(self._prefix + key, value, px=max(1, int(ttl_s * 1000))),
                fail_open=True)


class RedisState:
    def __init__(self, client: Client, prefix: str, fail_mode: str,
                 max_value_bytes: int, url_for_logs: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._fail_closed = fail_mode == "closed"
        self._where = url_for_logs
        self._down_since: float | None = None
        self._last_log = 0.0
        # The spent counters that missed spend while Redis was unreachable, oldest first, each
        # with the reservations whose release failed (bucket, amount): on the budget's first
        # use once Redis is back, its counter is reset from the ledger and they are released.
        self._stale: dict[str, list[tuple[int, float]]] = {}
        self._scripts = {name: client.register_script(src) for name, src in (
            ("admit", lua.ADMIT), ("settle_window", lua.SETTLE_WINDOW),
            ("reserve", lua.RESERVE), ("settle", lua.SETTLE), ("standing", lua.STANDING))}
        self.cache = RedisCache(self, prefix + "cache:", max_value_bytes)

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> RedisState:
        st = cfg.state
        if st.url is None:
            raise ValueError("state.backend redis needs 'url'")  # the config checks it first
        url = st.url.get_secret_value()
        options: dict[str, Any] = {"socket_timeout": st.timeout_s,
                                   "socket_connect_timeout": st.timeout_s}
        client: Client
        if st.cluster:
            client = RedisCluster.from_url(url, **options)
        else:
            client = aioredis.from_url(url, retry_on_timeout=False, **options)
        host = url.split("@")[-1]  # never log a password in the URL
        return cls(client, st.key_prefix, st.fail_mode, cfg.cache.max_bytes, host)

    async def call(self, op: Callable[[Client], Awaitable[T]], *,
                   fail_open: bool = False) -> T | None:
        """Run one Redis operation; on an outage, None (fail open) or StateUnavailable."""
        try:
            result = await op(self._redis)
        except (RedisError, RedisClusterException, OSError) as exc:  # the cluster's is apart
            self._went_down(exc)
            if self._fail_closed and not fail_open:
                raise StateUnavailable("Shared state (Redis) is unreachable; limits and "
                                       "budgets cannot be enforced, so requests are refused."
                                       ) from None
            return None
        if self._down_since is not None:
            log.warning("redis at %s is reachable again after %.1fs; %d budget counter(s) "
                        "will be reconciled from the ledger", self._where,
                        time.monotonic() - self._down_since, len(self._stale))
            self._down_since = None
        return result

    def _went_down(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
        if now - self._last_log >= _LOG_EVERY_S:
            self._last_log = now
            policy = "closed (refusing)" if self._fail_closed else "open (not enforcing)"
            log.warning("redis at %s is unreachable (%s); cache off, limits and budgets fail %s",
                        self._where, type(exc).__name__, policy)

    def status(self) -> tuple[bool, str]:
        if self._down_since is None:
            return True, "redis"
        mode = "closed" if self._fail_closed else "open"
        return not self._fail_closed, f"redis unreachable, failing {mode}"

    def _home(self, home: str) -> str:
        return f"{self._prefix}{{{home}}}:"

    async def admit(self, home: str, checks: list[WindowCheck]) -> Admission:
        args: list[Any] = [WINDOW_S / WINDOW_BUCKETS, WINDOW_BUCKETS]
        for c in checks:
            args += [c.limit, c.amount]
        keys = [self._home(home) + "win:" + c.key for c in checks]
        result = await self.call(lambda r: self._scripts["admit"](keys=keys, args=args))
        if not result:
            return Admission(0.0, None, None)   # failing open: counted nowhere
        wait = float(result[0])
        if wait > 0:
            return Admission(wait, checks[int(result[1]) - 1].key, None)
        return Admission(0.0, None, int(result[2]))

    async def settle_windows(self, home: str, keys: list[str], bucket: int,
                             delta: float) -> None:
        full = [self._home(home) + "win:" + k for k in keys]
        # Settling never refuses (the answer is given), so it fails open in either mode.
        await self.call(lambda r: self._scripts["settle_window"](keys=full,
                                                                 args=[bucket, delta]),
                        fail_open=True)

    def _budget_keys(self, home: str, claim: BudgetClaim) -> list[str]:
        base = f"{self._home(home)}budget:{claim.scope}:{int(claim.period_start)}"
        return [base + ":spent", base + ":res"]

    async def reserve(self, home: str, claims: list[BudgetClaim],
                      amount: float) -> BudgetReservation | BudgetRefusal:
        keys = [k for c in claims for k in self._budget_keys(home, c)]
        if not await self._reconciled(home, claims):
            return self._unreserved(keys)
        args: list[Any] = [_RESERVE_WIDTH_S, RESERVATION_BUCKETS, amount,
                           *(c.budget_usd for c in claims)]
        for _ in range(len(claims) + 1):  # at most one seeding per claim
            result = await self.call(lambda r: self._scripts["reserve"](keys=keys, args=args))
            if not result:
                return self._unreserved(keys)
            which = int(result[0])
            if which == 0:
                return BudgetReservation(int(result[1]), amount)
            if which > 0:
                return BudgetRefusal(claims[which - 1], float(result[1]),
                                     max(0.0, float(result[2])))
            await self._seed(keys[2 * int(result[1]) - 2], claims[int(result[1]) - 1])
        raise StateUnavailable("Budget counters could not be seeded from the ledger.")

    def _unreserved(self, keys: list[str]) -> BudgetReservation:
        """Failing open: nothing was reserved, and these counters miss what is spent now."""
        self._mark_stale(keys[0::2], None)
        return BudgetReservation(0, 0.0)

    async def _seed(self, spent_key: str, claim: BudgetClaim, *, force: bool = False) -> bool:
        """Set a budget's counter from the durable ledger: on its first use in a period
        (NX: another worker may have seeded it already), or after an outage (force)."""
        spent = await claim.load_spent()

        async def write(r: Client) -> bool:
            await r.set(spent_key, repr(spent), nx=not force, ex=_spent_ttl(claim))
            return True

        return await self.call(write) is not None

    def _mark_stale(self, spent_keys: Sequence[str], unreleased: BudgetReservation | None) -> None:
        for key in spent_keys:
            pending = self._stale.setdefault(key, [])
            if unreleased is not None and unreleased.amount > 0:
                pending.append((unreleased.bucket, unreleased.amount))
        while len(self._stale) > _MAX_STALE:
            dropped = next(iter(self._stale))
            del self._stale[dropped]
            log.warning("too many budgets to reconcile after the redis outage; %s will not be "
                        "reconciled from the ledger", dropped)

    async def _reconciled(self, home: str, claims: list[BudgetClaim]) -> bool:
        """Whether Redis is reachable, with these claims' counters reconciled from the ledger
        if they missed spend during an outage. While Redis is down one cheap PING stands in for
        the script, so an outage costs one timeout per request, as before."""
        if self._down_since is not None and await self.call(lambda r: r.ping()) is None:
            return False
        for claim in claims:
            keys = self._budget_keys(home, claim)
            if keys[0] in self._stale:
                if not await self._seed(keys[0], claim, force=True):
                    return False
                for bucket, amount in self._stale.pop(keys[0], []):
                    await self._release(keys, claim, bucket, amount)
        return True

    async def _release(self, keys: list[str], claim: BudgetClaim, bucket: int,
                       amount: float) -> None:
        """Release a reservation whose settle failed during the outage (if Redis kept it)."""
        args = [bucket, amount, 0, _spent_ttl(claim)]
        await self.call(lambda r: self._scripts["settle"](keys=keys, args=args), fail_open=True)

    async def settle(self, home: str, claims: list[BudgetClaim],
                     reservation: BudgetReservation | None, cost: float) -> None:
        release = reservation.amount if reservation is not None else 0.0
        if release == 0 and cost == 0:
            return
        keys = [k for c in claims for k in self._budget_keys(home, c)]
        args: list[Any] = [reservation.bucket if reservation is not None else 0, release, cost,
                           *(_spent_ttl(c) for c in claims)]
        settled = await self.call(lambda r: self._scripts["settle"](keys=keys, args=args),
                                  fail_open=True)  # the answer is given: never refuse here
        if settled is None:
            self._mark_stale(keys[0::2], reservation)

    async def standing(self, home: str, claim: BudgetClaim) -> tuple[float, float]:
        keys = self._budget_keys(home, claim)
        if not await self._reconciled(home, [claim]):
            raise StateUnavailable("Shared state (Redis) is unreachable.")
        args = [_RESERVE_WIDTH_S, RESERVATION_BUCKETS]
        result = await self.call(lambda r: self._scripts["standing"](keys=keys, args=args))
        if result is None:
            raise StateUnavailable("Shared state (Redis) is unreachable.")
        # Adding and releasing float amounts can leave a residue around 1e-18: never below 0.
        reserved = max(0.0, float(result[1]))
        if result[0] is None:  # not used yet this period: the ledger knows
            return await claim.load_spent(), reserved
        return float(result[0]), reserved

    def _breaker_key(self, dep_id: str) -> str:
        return f"{self._prefix}breaker:{dep_id}"

    async def breaker_updates(self, dep_ids: Sequence[str]) -> dict[str, tuple[str, float]]:
        keys = [self._breaker_key(d) for d in dep_ids]
        raw = await self.call(lambda r: _get_many(r, keys), fail_open=True) if keys else None
        out = {}
        for dep, value in zip(dep_ids, raw or (), strict=False):
            if value is not None:
                state, _, until = _text(value).partition("|")
                out[dep] = (state, float(until or 0))
        return out

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        await self.call(lambda r: r.set(self._breaker_key(dep_id), f"{state}|{open_until}",
                                        ex=_BREAKER_TTL_S), fail_open=True)

    async def close(self) -> None:
        await self._redis.aclose()


async def _get_many(client: Client, keys: list[str]) -> list[Any]:
    """MGET; across slots on a cluster (one MGET per node, not atomic: each key is its own)."""
    if isinstance(client, RedisCluster):
        return await client.mget_nonatomic(keys)
    return await client.mget(keys)


def _spent_ttl(claim: BudgetClaim) -> int:
    """A period's counter outlives its period by a day, then goes; a "total" one is renewed."""
    if math.isinf(claim.period_end):
        return _TOTAL_SPENT_TTL_S
    return max(60, math.ceil(claim.period_end - time.time()) + 86400)


def _text(value: bytes | str) -> str:
    """The client returns bytes (no decode_responses); str only if configured otherwise."""
    return value.decode() if isinstance(value, bytes) else value
