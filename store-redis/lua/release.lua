-- release (docs/protocol.md §4): the lease ends now, its token is retired,
-- the record stays processing and is claimable at once; waiters wake.
-- args: token, retention ms.
-- Replies the record (`view`) or { 'lost' }. `allow-oom`: a lease already
-- granted can always be given up.
register('release', { 'allow-oom' }, function(keys, args)
    local r = load(keys[1])
    if not holds(r, tonumber(args[1])) then
        return { 'lost' }
    end
    local _, now = clock()
    r[REL], r[LEXP], r[UPDATED] = true, now, now
    save(keys[1], r, now + tonumber(args[2]))
    wake(keys)
    return view('ok', r, now)
end)
