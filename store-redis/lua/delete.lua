-- delete (docs/protocol.md §4): forget the record, keeping its last token
-- in the fence for as long as the record would have lived, so that the
-- key's next token is still greater; waiters wake.
-- Replies 1 when there was a record, 0 when not. `allow-oom`: deleting is
-- how an operator frees memory.
register('delete', { 'allow-oom' }, function(keys, args)
    local r = load(keys[1])
    if not r then
        return 0
    end
    local left = redis.call('PTTL', keys[1])
    if left < 1 then
        left = 1
    end
    redis.call('DEL', keys[1])
    redis.call('SET', keys[2], int(r[TOKEN]), 'PX', left)
    wake(keys)
    return 1
end)
