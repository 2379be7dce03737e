-- renew (docs/protocol.md §4): the lease now ends at Redis's now + ttl.
-- args: token, lease ms ('' = the lease's own), retention ms.
-- Replies { 'ok', lease end, lease left } or { 'lost' }. `allow-oom`: a
-- worker keeps its lease while it finishes, and a renew rewrites the record
-- at the same size.
register('renew', { 'allow-oom' }, function(keys, args)
    local r = load(keys[1])
    if not holds(r, tonumber(args[1])) then
        return { 'lost' }
    end
    local _, now = clock()
    local ttl = tonumber(args[2]) or r[TTL]
    r[LEXP], r[UPDATED] = now + ttl, now
    save(keys[1], r, r[LEXP] + tonumber(args[3]))
    return { 'ok', r[LEXP], ttl }
end)
