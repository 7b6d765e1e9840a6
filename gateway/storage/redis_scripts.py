"""The Lua scripts of `redis_state.py`: each check-and-update is one script, run atomically by
Redis with Redis's own clock.

A window (and a budget's reservations) is one hash: field = bucket index (floor(time / width)),
value = the amount counted in that bucket. A script reads it (at most n live fields plus the
few that just left, which it deletes), so every admission, refusal, settle and reservation
does constant work and the hash holds at most n + 1 fields, whatever the traffic. No script
reads anything but its KEYS, and every KEY of one call carries the same hash tag, so they all
run on Redis Cluster.
"""

from __future__ import annotations

# live(key, oldest): the total of the buckets >= oldest, and those buckets as {index, amount}
# sorted oldest first; buckets older than `oldest` are deleted on the way.
_LIVE = """
local function live(key, oldest)
  local total, buckets, fields = 0, {}, redis.call('HGETALL', key)
  for j = 1, #fields, 2 do
    local b = tonumber(fields[j])
    if b < oldest then
      redis.call('HDEL', key, fields[j])
    else
      local amount = tonumber(fields[j + 1])
      total = total + amount
      buckets[#buckets + 1] = {b, amount}
    end
  end
  table.sort(buckets, function(x, y) return x[1] < y[1] end)
  return total, buckets
end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
"""

# KEYS: one hash per window. ARGV: bucket width, buckets per window, then limit and amount per
# key. Returns {wait, index of the full window, bucket}: {'0', 0, bucket} once counted in
# every window, or the seconds until the request would fit and which window is full.
ADMIT = _LIVE + """
local width, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local head = math.floor(now / width)
local wait, full = 0, 0
for i, key in ipairs(KEYS) do
  local limit, amount = tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i])
  local used, buckets = live(key, head - n + 1)
  if used + amount > limit then
    local freed, w = 0, n * width
    for _, b in ipairs(buckets) do
      freed = freed + b[2]
      if used - freed + amount <= limit then
        w = math.max(0.001, (b[1] + n) * width - now); break
      end
    end
    if w > wait then wait, full = w, i end
  end
end
if wait > 0 then return {tostring(wait), full, 0} end
local field = string.format('%d', head)
for i, key in ipairs(KEYS) do
  redis.call('HINCRBYFLOAT', key, field, ARGV[2 + 2 * i])
  redis.call('EXPIRE', key, math.ceil(n * width) + 1)
end
return {'0', 0, head}
"""

# KEYS: window hashes. ARGV: bucket, delta. Corrects the bucket the admission went into, if it
# is still there (a bucket that left the window needs no correction).
SETTLE_WINDOW = """
for _, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, ARGV[1]) == 1 then
    redis.call('HINCRBYFLOAT', key, ARGV[1], ARGV[2])
  end
end
return 0
"""

# KEYS: per claim, its spent counter and its reservations hash. ARGV: bucket width, buckets,
# amount, then the budget per claim. Returns {0, bucket} once reserved under every claim;
# {i, spent, reserved} for a claim with no room; {-1, i} for a claim whose spent counter is
# missing (first use in the period, or lost): the caller seeds it from the ledger and retries.
RESERVE = _LIVE + """
local width, n, amount = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local head = math.floor(now / width)
for i = 1, #KEYS / 2 do
  local spent = redis.call('GET', KEYS[2 * i - 1])
  if not spent then return {-1, i} end
  local reserved = live(KEYS[2 * i], head - n + 1)
  if tonumber(spent) + reserved + amount > tonumber(ARGV[3 + i]) then
    return {i, spent, tostring(reserved)}
  end
end
local field = string.format('%d', head)
for i = 1, #KEYS / 2 do
  redis.call('HINCRBYFLOAT', KEYS[2 * i], field, ARGV[3])
  redis.call('EXPIRE', KEYS[2 * i], math.ceil(n * width) + 1)
end
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
STANDING = _LIVE + """
local width, n = tonumber(ARGV[1]), tonumber(ARGV[2])
local reserved = live(KEYS[2], math.floor(now / width) - n + 1)
return {redis.call('GET', KEYS[1]), tostring(reserved)}
"""
