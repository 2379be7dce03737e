-- fail (docs/protocol.md §4): store the error, schedule a retry if one is
-- allowed, wake waiters. Only a repeat of a `fail` that succeeded succeeds
-- again (same token, record made failed by that fail); a record a claim
-- turned failed (expired lease, no attempts left) is a lost lease.
-- args: token, message, retryable ('1' | '0'), retention ms.
-- Replies the record (`view`) or { 'lost' }. `allow-oom`: a lease already
-- granted can always report its failure.
register('fail', { 'allow-oom' }, function(keys, args)
    local token, retryable = tonumber(args[1]), args[3] == '1'
    local r = load(keys[1])
    if not holds(r, token) then
        return not_held(r, token, 'f')
    end
    local _, now = clock()
    r[STATE], r[EMSG], r[ERETRY], r[FTOK], r[UPDATED] = 'f', args[2], retryable, token, now
    r[LEXP], r[REL], r[RETRY_AT] = false, false, false
    if retryable then
        local failures = r[FAILURES]
        r[FAILURES] = failures + 1
        if r[ATTEMPT] < r[MAX] then
            -- Backoff: base × 2^(failures so far), capped at one hour.
            r[RETRY_AT] = now + math.min(r[BACKOFF] * 2 ^ failures, 3600000)
        end
    end
    save(keys[1], r, now + tonumber(args[4]))
    wake(keys)
    return view('ok', r, now)
end)
