-- complete (design §4): store the result, wake waiters. The same token
-- repeating a successful complete succeeds again; the first result stands.
-- ARGV: channel, key, token, result, retention ms.
local token = ARGV[3]
local _, now = clock()
if not holds(token) then
    return answer(repeated(token, 'completed') and 'ok' or 'lost', now)
end
redis.call('HSET', KEYS[1], 'state', 'completed', 'result', ARGV[4], 'done', int(now),
    'updated', int(now))
redis.call('HDEL', KEYS[1], 'lexp')
redis.call('DEL', KEYS[2])
keep_until(now + tonumber(ARGV[5]))
wake()
return answer('ok', now)
