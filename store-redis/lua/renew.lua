-- renew (docs/protocol.md §4): the lease now ends at Redis's now + ttl.
-- ARGV: channel, key, token, lease ms ('' = the lease's own), retention ms.
-- The first write is a PEXPIREAT, which Redis runs even when out of memory
-- (see lib.lua): a worker keeps its lease while it finishes, and a renew
-- rewrites values of the same size, so it hardly grows memory.
local token = ARGV[3]
local _, now = clock()
if not holds(token) then
    return answer('lost', now)
end
local ttl = ARGV[4]
if ttl == '' then
    ttl = redis.call('HGET', KEYS[1], 'ttl')
end
local lexp = now + tonumber(ttl)
local exp = lexp + tonumber(ARGV[5])
redis.call('PEXPIREAT', KEYS[1], int(exp))
redis.call('HSET', KEYS[1], 'lexp', int(lexp), 'updated', int(now))
redis.call('SET', KEYS[2], token, 'PXAT', int(lexp))
return settle(exp, 'ok', now)
