-- fail (docs/protocol.md §4): store the error, schedule a retry if one is allowed,
-- wake waiters. Only a repeat of a `fail` that succeeded succeeds again
-- (same token, record made failed by that fail); a record a claim turned
-- failed (expired lease, no attempts left) is a lost lease.
-- ARGV: channel, key, token, message, retryable ('1' | '0'), retention ms.
-- The first write is an HDEL, which Redis runs even when out of memory
-- (see lib.lua): a lease already granted can always report its failure.
local token, retryable = ARGV[3], ARGV[5] == '1'
local _, now = clock()
if not holds(token) then
    return answer(repeated_fail(token) and 'ok' or 'lost', now)
end
local r = redis.call('HMGET', KEYS[1], 'failures', 'attempt', 'max', 'backoff')
local failures, attempt, max, backoff = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
redis.call('HDEL', KEYS[1], 'lexp', 'retry_at')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'failed', 'emsg', ARGV[4], 'eretry', ARGV[5],
    'ftok', token, 'updated', int(now))
if retryable then
    redis.call('HSET', KEYS[1], 'failures', int(failures + 1))
    if attempt < max then
        -- Backoff: base × 2^(failures so far), capped at one hour.
        local wait = math.min(backoff * 2 ^ failures, 3600000)
        redis.call('HSET', KEYS[1], 'retry_at', int(now + wait))
    end
end
wake()
return settle(now + tonumber(ARGV[6]), 'ok', now)
