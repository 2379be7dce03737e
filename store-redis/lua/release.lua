-- release (design §4): the lease ends now, its token is retired, the record
-- stays processing and is claimable at once; waiters wake.
-- ARGV: channel, key, token, retention ms.
local token = ARGV[3]
local _, now = clock()
if not holds(token) then
    return answer('lost', now)
end
redis.call('HSET', KEYS[1], 'rel', '1', 'lexp', int(now), 'updated', int(now))
redis.call('DEL', KEYS[2])
keep_until(now + tonumber(ARGV[4]))
wake()
return answer('ok', now)
