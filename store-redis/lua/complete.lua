-- complete (docs/protocol.md §4): store the result, wake waiters. The same token
-- repeating a successful complete succeeds again; the first result stands.
-- ARGV: channel, key, token, result, retention ms.
-- The first write is an HDEL, which Redis runs even when out of memory
-- (see lib.lua): a lease already granted can always deliver its result.
local token = ARGV[3]
local _, now = clock()
if not holds(token) then
    return answer(repeated_complete(token) and 'ok' or 'lost', now)
end
redis.call('HDEL', KEYS[1], 'lexp')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[4], 'done', int(now),
    'updated', int(now))
wake()
return settle(now + tonumber(ARGV[5]), 'ok', now)
