"""The Lua scripts of the Redis backend: each decision runs atomically in Redis, by Redis's own clock (TIME).

Every key a script touches shares one hash tag (the principal's), so each runs on Redis Cluster too. A stored
time (a TAT, in microseconds: 16 digits) is written with `%.17g`: Lua's `tostring` keeps 14 significant digits,
which rounded it to 100 µs, and a burst of admissions then reported the same `remaining` twice.
"""

# GCRA with integer microseconds from Redis TIME. KEYS[1]; ARGV: cost, limit, window_us. Returns allowed,
# remaining, reset_us (as text: Lua numbers are doubles and Redis would truncate them).
GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local emission = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * emission
local allowed_at = new_tat - window
if allowed_at > now then
  return {0, 0, tostring(allowed_at - now)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allowed_at) / emission), tostring(new_tat - now)}
"""

# KEYS[1]; ARGV: reserved, actual, limit, window_us.
SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = (tonumber(ARGV[2]) - tonumber(ARGV[1])) * tonumber(ARGV[4]) / tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if delta > 0 and tat < now then tat = now end
local new_tat = tat + delta
if new_tat <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 1
"""

# Admission, all or nothing: every limit is checked, then all are taken, or none. Leases are a sorted set of lease
# ids scored by expiry (ms); expired ones are swept first, whatever else keeps the key alive.
# KEYS: requests, leases, tokens; ARGV: requests, window_us, streams, lease, ttl_ms, tokens, token_budget.
# Returns {refused (0 none, 1 requests, 2 streams, 3 tokens), remaining, reset_us as text}.
ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local requests, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local streams, lease, ttl = tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local tokens, budget = tonumber(ARGV[6]), tonumber(ARGV[7])
local function gcra(key, cost, limit)
  local emission = window / limit
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local new_tat = tat + cost * emission
  return new_tat, new_tat - window - now, emission
end
local request_tat, remaining, reset = 0, 0, 0
if requests > 0 then
  local early, emission
  request_tat, early, emission = gcra(KEYS[1], 1, requests)
  if early > 0 then return {1, 0, tostring(early)} end
  remaining = math.min(requests, math.floor(-early / emission))
  reset = request_tat - now
end
local now_ms = math.floor(now / 1000)
local held = false
if streams > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now_ms)
  held = redis.call('ZSCORE', KEYS[2], lease)
  if not held and redis.call('ZCARD', KEYS[2]) >= streams then
    local first = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
    return {2, 0, tostring((tonumber(first[2]) - now_ms) * 1000)}
  end
end
local token_tat = 0
if budget > 0 then
  local early
  token_tat, early = gcra(KEYS[3], tokens, budget)
  if early > 0 then return {3, 0, tostring(early)} end
end
if requests > 0 then
  redis.call('SET', KEYS[1], string.format('%.17g', request_tat), 'PX', math.ceil((request_tat - now) / 1000) + 1)
end
if streams > 0 then
  redis.call('ZADD', KEYS[2], now_ms + ttl, lease)
  local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
  redis.call('PEXPIRE', KEYS[2], tonumber(last[2]) - now_ms + 1)
end
if budget > 0 then
  redis.call('SET', KEYS[3], string.format('%.17g', token_tat), 'PX', math.ceil((token_tat - now) / 1000) + 1)
end
return {0, remaining, tostring(reset)}
"""

# Re-assert leases this process holds, re-adding any that Redis lost (a restart, an eviction).
# KEYS[1]; ARGV: ttl_ms, lease...
ASSERT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now + 1)
return 1
"""
