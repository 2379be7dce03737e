-- claim_or_get (docs/protocol.md §3), the one atomic decision.
-- args: kind, fingerprint ('' = none), and the rest of the claim, read only
--       when it writes: '<lease ms> <max attempts> <backoff ms> <retention
--       ms> <token floor> <owner>', the floor being the highest token the
--       calling store has seen ('0' = none), the owner possibly empty; then,
--       optionally, '1' when a result cache in front of the store wants the
--       retention left of a completed record.
-- Replies, each with only what its answer needs:
--   { 'acquired', token, attempt, lease end, lease ms, takeover (1 | 0) }
--   { 'in_flight', token, attempt, lease end, lease left, owner }
--   { 'completed', token, attempt, completed at, retention left (ms, or
--     false when not asked), result }
--   { 'failed', token, attempt, error, retryable (1 | 0), retry after ms }
--   { 'mismatch', the record's kind }
--   { 'refused' } (claim_ro only: this claim would write)

-- The retention left (ms) of the completed record at keys[1], when the
-- claim asks for it (args[4]): its key's own expiry. It costs a PTTL, so
-- only a store with a result cache asks.
local function retention_left(keys, args)
    if args[4] ~= '1' then
        return false
    end
    local left = redis.call('PTTL', keys[1])
    return left > 0 and left
end

-- Whether a record of `kind` with fingerprint `fp` (false: none) answers a
-- claim with `args`.
local function matches(kind, fp, args)
    return kind == args[1] and (not fp or args[2] == '' or fp == args[2])
end

-- The answer to a claim on the record `r` (nil: none) that only reads, or
-- nil when the claim writes: a new lease, or a record turned failed. Also
-- Redis's clock, when it was read. `keys` are the claim's.
local function decide(keys, r, args)
    if not r then
        return nil
    end
    if not matches(r[KIND], r[FP], args) then
        return { 'mismatch', r[KIND] }
    end
    local state = r[STATE]
    if state == 'c' then
        return { 'completed', r[TOKEN], r[ATTEMPT], r[DONE], retention_left(keys, args), r[RESULT] }
    end
    local now_us, now = clock()
    if state == 'p' and not r[REL] and r[LEXP] > now then
        return { 'in_flight', r[TOKEN], r[ATTEMPT], r[LEXP], r[LEXP] - now, r[OWNER] }
    end
    if state == 'f' and (not r[RETRY_AT] or r[RETRY_AT] > now) then
        return { 'failed', r[TOKEN], r[ATTEMPT], r[EMSG], r[ERETRY] and 1 or 0,
            r[RETRY_AT] and r[RETRY_AT] - now or false }
    end
    return nil, now_us, now
end

register('claim', {}, function(keys, args)
    local packed = redis.pcall('GET', keys[1])
    if type(packed) == 'string' then
        -- The hottest path, a completed record, decodes only the values it
        -- answers with (they come first) and reads no clock: its retention
        -- is the key's own expiry, so a record Redis still holds is kept.
        local _, format, state, kind, fp, token, attempt, done, _, result =
            cmsgpack.unpack_limit(packed, 9, HEADER)
        if state == 'c' and format == FORMAT and matches(kind, fp, args) then
            return { 'completed', token, attempt, done, retention_left(keys, args), result }
        end
    end
    local r = decode(keys[1], packed)
    local reply, now_us, now = decide(keys, r, args)
    if reply then
        return reply
    end
    local lease_ms, max, backoff, retention, floor, owner =
        string.match(args[3], '^(%d+) (%d+) (%d+) (%d+) (%d+) (.*)$')
    lease_ms, retention, floor = tonumber(lease_ms), tonumber(retention), tonumber(floor)
    local takeover = false
    if not r then
        -- No record, or Redis expired it past retention: a fresh one. Its
        -- first token must exceed any token a deleted predecessor had.
        now_us, now = clock()
        local last = redis.call('GET', keys[2])
        r = blank()
        r[KIND], r[FP], r[ATTEMPT], r[MAX], r[BACKOFF], r[FAILURES], r[CREATED] =
            args[1], args[2] ~= '' and args[2], 1, tonumber(max), tonumber(backoff), 0, now
        r[TOKEN] = next_token(now_us, tonumber(last), floor)
        if last then
            redis.call('DEL', keys[2])
        end
    else
        if r[STATE] == 'p' and not r[REL] and r[ATTEMPT] >= r[MAX] then
            -- An expired lease with no attempt left is not taken over. No
            -- `ftok`: no `fail` made this record failed, so none may claim
            -- it did.
            r[STATE], r[LEXP], r[RETRY_AT], r[FTOK], r[UPDATED] = 'f', false, false, false, now
            r[EMSG] = 'lease expired on attempt ' .. int(r[ATTEMPT]) .. ' of ' .. int(r[MAX])
            r[ERETRY], r[FAILURES] = true, r[FAILURES] + 1
            save(keys[1], r, now + retention)
            wake(keys)
            return { 'failed', r[TOKEN], r[ATTEMPT], r[EMSG], 1, false }
        end
        -- Takeover of an expired lease, retry after backoff, or a new lease
        -- after a release (which does not count as an attempt).
        takeover = r[STATE] == 'p' and not r[REL]
        if not r[REL] then
            r[ATTEMPT] = r[ATTEMPT] + 1
        end
        r[TOKEN] = next_token(now_us, r[TOKEN], floor)
        -- What a failure, a retry schedule or a former owner left behind.
        r[EMSG], r[ERETRY], r[RETRY_AT], r[FTOK] = false, false, false, false
    end
    r[STATE], r[TTL], r[LEXP], r[REL], r[UPDATED] = 'p', lease_ms, now + lease_ms, false, now
    r[OWNER] = owner ~= '' and owner
    -- A processing record is kept until its lease ends plus retention, so
    -- an abandoned key is forgotten by Redis without a sweep.
    save(keys[1], r, r[LEXP] + retention)
    return { 'acquired', r[TOKEN], r[ATTEMPT], r[LEXP], lease_ms, takeover and 1 or 0 }
end)

-- The same decision when Redis is out of memory and refused `claim` whole:
-- answers the claims that only read, and refuses the rest, having written
-- nothing.
register('claim_ro', { 'no-writes' }, function(keys, args)
    return decide(keys, load(keys[1]), args) or { 'refused' }
end)
