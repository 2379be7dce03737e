-- renew (design §4): the lease now ends at Redis's now + ttl.
-- ARGV: channel, key, token, lease ms ('' = the lease's own), retention ms.
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
redis.call('HSET', KEYS[1], 'lexp', int(lexp), 'updated', int(now))
keep_until(lexp + tonumber(ARGV[5]))
redis.call('SET', KEYS[2], token, 'PXAT', int(lexp))
return answer('ok', now)
