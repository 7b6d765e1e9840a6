"""`state.backend: redis`: one set of limits, budgets, cache and breakers for a whole fleet.

Every check-and-update is one Lua script, run atomically by Redis with Redis's own clock, so
concurrent requests on different machines can neither both squeeze into the last slot of a
window nor both take the last dollar of a budget.

If Redis becomes unreachable, each call gives up after `state.timeout_s`: the cache fails open
(a miss, nothing stored); limits and budgets follow `state.fail_mode` (`open`: serve without
them; `closed`: 503 `state_unavailable`). The outage is logged (once per minute while it lasts),
reported by `/readyz`, and recovery is automatic.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.config import GatewayConfig
from gateway.errors import StateUnavailable
from gateway.storage.contracts import WINDOW_S, BudgetClaim, WindowCheck

log = logging.getLogger("podium.state")
T = TypeVar("T")
_LOG_EVERY_S = 60.0

# KEYS: one sorted set per window (member: request id, score: time); a hash `<key>:amt` holds
# amounts and a string `<key>:sum` their total. ARGV: window, request id, then limit and amount
# per key. Returns {wait, index of the full window} or {0, 0} after recording everywhere.
_ADMIT = """
local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local window, rid = tonumber(ARGV[1]), ARGV[2]
local wait, full = 0, 0
for i, key in ipairs(KEYS) do
  local amt, sum = key .. ':amt', key .. ':sum'
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now - window)) do
    redis.call('INCRBYFLOAT', sum, -tonumber(redis.call('HGET', amt, m) or '0'))
    redis.call('HDEL', amt, m); redis.call('ZREM', key, m)
  end
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local used = tonumber(redis.call('GET', sum) or '0')
  if used + amount > limit then
    local freed, w = 0, window
    local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for j = 1, #entries, 2 do
      freed = freed + tonumber(redis.call('HGET', amt, entries[j]) or '0')
      if used - freed + amount <= limit then w = tonumber(entries[j + 1]) + window - now; break end
    end
    if w > wait then wait, full = w, i end
  end
end
if wait > 0 then return {tostring(wait), full} end
local ttl = math.ceil(window) + 1
for i, key in ipairs(KEYS) do
  local amount = ARGV[2 + 2 * i]
  redis.call('ZADD', key, now, rid); redis.call('HSET', key .. ':amt', rid, amount)
  redis.call('INCRBYFLOAT', key .. ':sum', amount)
  for _, k in ipairs({key, key .. ':amt', key .. ':sum'}) do redis.call('EXPIRE', k, ttl) end
end
return {'0', 0}
"""

# KEYS: per window key. ARGV: request id, new amount.
_SETTLE_WINDOW = """
for _, key in ipairs(KEYS) do
  local old = redis.call('HGET', key .. ':amt', ARGV[1])
  if old then
    redis.call('HSET', key .. ':amt', ARGV[1], ARGV[2])
    redis.call('INCRBYFLOAT', key .. ':sum', tonumber(ARGV[2]) - tonumber(old))
  end
end
return 0
"""

# KEYS: per claim, its spent counter, reservation hash and reservation-expiry sorted set.
# ARGV: request id, amount, ttl, then the budget per claim. Returns {0} or {i, spent, reserved}.
_RESERVE = """
local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local rid, amount, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local n = #KEYS / 3
for i = 1, n do
  local spent_key, res, exp = KEYS[3 * i - 2], KEYS[3 * i - 1], KEYS[3 * i]
  for _, m in ipairs(redis.call('ZRANGEBYSCORE', exp, '-inf', now)) do
    redis.call('HDEL', res, m); redis.call('ZREM', exp, m)
  end
  local reserved = 0
  for _, v in ipairs(redis.call('HVALS', res)) do reserved = reserved + tonumber(v) end
  local spent = tonumber(redis.call('GET', spent_key) or '0')
  if spent + reserved + amount > tonumber(ARGV[3 + i]) then
    return {i, tostring(spent), tostring(reserved)}
  end
end
for i = 1, n do
  redis.call('HSET', KEYS[3 * i - 1], rid, amount); redis.call('ZADD', KEYS[3 * i], now + ttl, rid)
end
return {0}
"""

# KEYS: as for _RESERVE. ARGV: request id, cost.
_SETTLE = """
for i = 1, #KEYS / 3 do
  redis.call('HDEL', KEYS[3 * i - 1], ARGV[1]); redis.call('ZREM', KEYS[3 * i], ARGV[1])
  redis.call('INCRBYFLOAT', KEYS[3 * i - 2], ARGV[2])
end
return 0
"""


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
    def __init__(self, client: aioredis.Redis, prefix: str, fail_mode: str,
                 max_value_bytes: int, url_for_logs: str) -> None:
        self._redis = client
        self._prefix = prefix
        self._fail_closed = fail_mode == "closed"
        self._where = url_for_logs
        self._down_since: float | None = None
        self._last_log = 0.0
        self._scripts = {name: client.register_script(src) for name, src in (
            ("admit", _ADMIT), ("settle_window", _SETTLE_WINDOW), ("reserve", _RESERVE),
            ("settle", _SETTLE))}
        self.cache = RedisCache(self, prefix + "cache:", max_value_bytes)

    @classmethod
    def from_config(cls, cfg: GatewayConfig) -> RedisState:
        st = cfg.state
        if st.url is None:
            raise ValueError("state.backend redis needs 'url'")  # the config checks it first
        url = st.url.get_secret_value()
        client = aioredis.from_url(url, socket_timeout=st.timeout_s,
                                   socket_connect_timeout=st.timeout_s, retry_on_timeout=False)
        host = url.split("@")[-1]  # never log a password in the URL
        return cls(client, st.key_prefix, st.fail_mode, cfg.cache.max_bytes, host)

    async def call(self, op: Callable[[aioredis.Redis], Awaitable[T]], *,
                   fail_open: bool = False) -> T | None:
        """Run one Redis operation; on an outage, None (fail open) or StateUnavailable."""
        try:
            result = await op(self._redis)
        except (RedisError, OSError) as exc:
            self._went_down(exc)
            if self._fail_closed and not fail_open:
                raise StateUnavailable("Shared state (Redis) is unreachable; limits and "
                                       "budgets cannot be enforced, so requests are refused."
                                       ) from None
            return None
        if self._down_since is not None:
            log.warning("redis at %s is reachable again after %.1fs", self._where,
                        time.monotonic() - self._down_since)
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

    async def admit(self, checks: list[WindowCheck],
                    request_id: str) -> tuple[float, str | None]:
        args: list[Any] = [WINDOW_S, request_id]
        for c in checks:
            args += [c.limit, c.amount]
        keys = [self._prefix + "win:" + c.key for c in checks]
        result = await self.call(lambda r: self._scripts["admit"](keys=keys, args=args))
        if not result or float(result[0]) <= 0:
            return 0.0, None
        return float(result[0]), checks[int(result[1]) - 1].key

    async def settle_windows(self, keys: list[str], request_id: str, amount: float) -> None:
        full = [self._prefix + "win:" + k for k in keys]
        await self.call(lambda r: self._scripts["settle_window"](keys=full,
                                                                 args=[request_id, amount]))

    def _budget_keys(self, claim: BudgetClaim) -> list[str]:
        base = f"{self._prefix}budget:{claim.scope}:{int(claim.period_start)}"
        return [base + ":spent", base + ":res", base + ":exp"]

    async def reserve(self, claims: list[BudgetClaim], request_id: str, amount: float,
                      ttl_s: float) -> tuple[BudgetClaim, float, float] | None:
        for claim in claims:
            await self._load_spent(claim)
        keys = [k for c in claims for k in self._budget_keys(c)]
        args: list[str | float] = [request_id, amount, ttl_s, *(c.budget_usd for c in claims)]
        result = await self.call(lambda r: self._scripts["reserve"](keys=keys, args=args))
        if not result or int(result[0]) == 0:
            return None
        return claims[int(result[0]) - 1], float(result[1]), float(result[2])

    async def _load_spent(self, claim: BudgetClaim) -> None:
        """First use of a budget in a period: seed the counter from the durable ledger."""
        spent_key = self._budget_keys(claim)[0]
        if await self.call(lambda r: r.exists(spent_key)):
            return
        spent = await claim.load_spent()
        # Kept well past any period (a month); NX: another worker may have seeded it already.
        await self.call(lambda r: r.set(spent_key, repr(spent), nx=True, ex=40 * 86400))

    async def settle(self, claims: list[BudgetClaim], request_id: str, cost: float) -> None:
        keys = [k for c in claims for k in self._budget_keys(c)]
        await self.call(lambda r: self._scripts["settle"](keys=keys, args=[request_id, cost]))

    async def breaker_updates(self) -> dict[str, tuple[str, float]]:
        raw = await self.call(lambda r: r.hgetall(self._prefix + "breakers"), fail_open=True)
        out = {}
        for dep, value in (raw or {}).items():
            state, _, until = _text(value).partition("|")
            out[_text(dep)] = (state, float(until or 0))
        return out

    async def publish_breaker(self, dep_id: str, state: str, open_until: float) -> None:
        await self.call(lambda r: r.hset(self._prefix + "breakers", dep_id,
                                         f"{state}|{open_until}"), fail_open=True)

    async def close(self) -> None:
        await self._redis.aclose()


def _text(value: bytes | str) -> str:
    """The client returns bytes (no decode_responses); str only if configured otherwise."""
    return value.decode() if isinstance(value, bytes) else value
