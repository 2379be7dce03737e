-- fail (design §4): store the error, schedule a retry if one is allowed,
-- wake waiters. The same token repeating a successful fail succeeds again.
-- ARGV: channel, key, token, message, retryable ('1' | '0'), retention ms.
local token, retryable = ARGV[3], ARGV[5] == '1'
local _, now = clock()
if not holds(token) then
    return answer(repeated(token, 'failed') and 'ok' or 'lost', now)
end
local r = redis.call('HMGET', KEYS[1], 'failures', 'attempt', 'max', 'backoff')
local failures, attempt, max, backoff = tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4])
redis.call('HSET', KEYS[1], 'state', 'failed', 'emsg', ARGV[4], 'eretry', ARGV[5],
    'updated', int(now))
redis.call('HDEL', KEYS[1], 'lexp', 'retry_at')
if retryable then
    redis.call('HSET', KEYS[1], 'failures', int(failures + 1))
    if attempt < max then
        -- Backoff: base × 2^(failures so far), capped at one hour.
        local wait = math.min(backoff * 2 ^ failures, 3600000)
        redis.call('HSET', KEYS[1], 'retry_at', int(now + wait))
    end
end
redis.call('DEL', KEYS[2])
keep_until(now + tonumber(ARGV[6]))
wake()
return answer('ok', now)
