"""The Lua scripts of `redis_state.py`: each check-and-update is one script, run atomically by
Redis with Redis's own clock.

A window (and a budget's reservations) is one hash: a field per bucket (its index,
floor(time / width)) holding the amount counted in it, plus `sum` (the total of the live
buckets) and `head` (the newest bucket seen). When time moves to a new bucket, the buckets that
left the window are subtracted from `sum` and deleted: at most n per move, so admitting costs a
few hash commands (amortised O(1)), a refusal walks at most n buckets to find when the request
would fit, and the hash never holds more than n + 2 fields, whatever the traffic. No script
reads anything but its KEYS, and every KEY of one call carries the same hash tag, so they all
run on Redis Cluster.
"""

from __future__ import annotations

# newest(keys, head): the bucket to count in: the current one, or a newer one a window already
# holds (a clock that stepped back keeps the newer window), the same for every key.
# advance(key, head, n): the window's total at bucket `head`, once the buckets that left it
# are subtracted and deleted.
# wait(key, head, n, width, used, amount, limit): seconds until `amount` fits, the oldest
# buckets leaving first; a whole window if it never fits on its own.
_COMMON = """
local function newest(keys, head)
  for _, key in ipairs(keys) do
    local last = tonumber(redis.call('HGET', key, 'head'))
    if last and last > head then head = last end
  end
  return head
end
local function advance(key, head, n)
  local state = redis.call('HMGET', key, 'sum', 'head')
  local sum, last = tonumber(state[1]) or 0, tonumber(state[2])
  if last == nil or head == last then return sum end
  if head - last >= n then redis.call('DEL', key); return 0 end
  for b = last - n + 1, head - n do
    local field = string.format('%d', b)
    local v = redis.call('HGET', key, field)
    if v then sum = sum - tonumber(v); redis.call('HDEL', key, field) end
  end
  redis.call('HSET', key, 'sum', sum, 'head', string.format('%d', head))
  return sum
end
local function wait(key, head, n, width, now, used, amount, limit)
  local freed = 0
  for b = head - n + 1, head do
    freed = freed + (tonumber(redis.call('HGET', key, string.format('%d', b))) or 0)
    if used - freed + amount <= limit then return math.max(0.001, (b + n) * width - now) end
  end
  return n * width
end
local function count(key, head, amount, ttl)
  local field = string.format('%d', head)
  redis.call('HINCRBYFLOAT', key, field, amount)
  redis.call('HINCRBYFLOAT', key, 'sum', amount)
  redis.call('HSET', key, 'head', field)
  redis.call('EXPIRE', key, ttl)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# KEYS: one hash per window. ARGV: bucket width, buckets per window, then limit and amount per
# key. Returns {wait, index of the full window, bucket}: {'0', 0, bucket} once counted in
# every window, or the seconds until the request would fit and which window is full.
ADMIT = _COMMON + """
local width, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local head = newest(KEYS, math.floor(now / width))
local longest, full = 0, 0
for i, key in ipairs(KEYS) do
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local used = advance(key, head, n)
  if used + amount > limit then
    local w = wait(key, head, n, width, now, used, amount, limit)
    if w > longest then longest, full = w, i end
  end
end
if longest > 0 then return {tostring(longest), full, 0} end
for i, key in ipairs(KEYS) do count(key, head, ARGV[2 + 2 * i], math.ceil(n * width) + 1) end
return {'0', 0, head}
"""

# KEYS: window hashes. ARGV: bucket, delta. Corrects the bucket the admission went into, if it
# is still there (a bucket that left the window needs no correction).
SETTLE_WINDOW = """
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, ARGV[1]) == 1 then
    redis.call('HINCRBYFLOAT', key, ARGV[1], ARGV[2])
    redis.call('HINCRBYFLOAT', key, 'sum', ARGV[2])
  end
end
return 0
"""

# KEYS: per claim, its spent counter and its reservations hash. ARGV: bucket width, buckets,
# amount, then the budget per claim. Returns {0, bucket} once reserved under every claim;
# {i, spent, reserved} for a claim with no room; {-1, i} for a claim whose spent counter is
# missing (first use in the period, or lost): the caller seeds it from the ledger and retries.
RESERVE = _COMMON + """
local width, n, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local rings = {}
for i = 1, #KEYS / 2 do rings[i] = KEYS[2 * i] end
local head = newest(rings, math.floor(now / width))
for i = 1, #KEYS / 2 do
  local spent = redis.call('GET', KEYS[2 * i - 1])
  if not spent then return {-1, i} end
  local reserved = advance(KEYS[2 * i], head, n)
  if tonumber(spent) + reserved + amount > tonumber(ARGV[3 + i]) then
    return {i, spent, tostring(reserved)}
  end
end
for i = 1, #KEYS / 2 do count(KEYS[2 * i], head, ARGV[3], math.ceil(n * width) + 1) end
return {0, head}
"""

# KEYS: as for RESERVE. ARGV: bucket, amount to release (0: none), cost, then the spent
# counter's lifetime per claim. A counter that is gone is left alone: the next reservation
# seeds it from the ledger, which has this cost too.
SETTLE = """
local release = tonumber(ARGV[2])
for i = 1, #KEYS / 2 do
  if release ~= 0 and redis.call('HEXISTS', KEYS[2 * i], ARGV[1]) == 1 then
    redis.call('HINCRBYFLOAT', KEYS[2 * i], ARGV[1], -release)
    redis.call('HINCRBYFLOAT', KEYS[2 * i], 'sum', -release)
  end
  if redis.call('EXISTS', KEYS[2 * i - 1]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[2 * i - 1], ARGV[3])
    redis.call('EXPIRE', KEYS[2 * i - 1], ARGV[3 + i])
  end
end
return 0
"""

# KEYS: one claim's spent counter and reservations hash. ARGV: bucket width, buckets.
# Returns {spent or false, reserved}.
STANDING = _COMMON + """
local width, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local reserved = advance(KEYS[2], newest({KEYS[2]}, math.floor(now / width)), n)
return {redis.call('GET', KEYS[1]), tostring(reserved)}
"""
