-- delete (docs/protocol.md §4): forget the record, keeping its last token in the
-- fence for as long as the record would have lived, so that the key's next
-- token is still greater; waiters wake.
-- ARGV: channel, key.
-- The first write is a DEL, which Redis runs even when out of memory (see
-- lib.lua): deleting is how an operator frees memory.
local token = redis.call('HGET', KEYS[1], 'token')
if not token then
    return 0
end
local left = redis.call('PTTL', KEYS[1])
if left < 1 then
    left = 1
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[3], token, 'PX', left)
wake()
return 1
