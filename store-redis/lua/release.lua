-- release (docs/protocol.md §4): the lease ends now, its token is retired, the record
-- stays processing and is claimable at once; waiters wake.
-- ARGV: channel, key, token, retention ms.
-- The first write is a DEL, which Redis runs even when out of memory (see
-- lib.lua): a lease already granted can always be given up.
local token = ARGV[3]
local _, now = clock()
if not holds(token) then
    return answer('lost', now)
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'rel', '1', 'lexp', int(now), 'updated', int(now))
wake()
return settle(now + tonumber(ARGV[4]), 'ok', now)
