-- complete (docs/protocol.md §4): store the result, wake waiters. The same
-- token repeating a successful complete succeeds again; the first result
-- stands.
-- args: token, result, retention ms.
-- Replies the record (`view`) or { 'lost' }. `allow-oom`: a lease already
-- granted can always deliver its result.
register('complete', { 'allow-oom' }, function(keys, args)
    local token = tonumber(args[1])
    local r = load(keys[1])
    if not holds(r, token) then
        return not_held(r, token, 'c')
    end
    local _, now = clock()
    r[STATE], r[RESULT], r[DONE], r[UPDATED], r[LEXP], r[REL] = 'c', args[2], now, now, false, false
    save(keys[1], r, now + tonumber(args[3]))
    wake(keys)
    return view('ok', r, now)
end)
