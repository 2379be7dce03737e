-- claim_or_get (docs/protocol.md §3), the one atomic decision.
-- ARGV: channel, key, kind, fingerprint ('' = none), owner ('' = none),
--       lease ms, max attempts, backoff ms, retention ms, token floor (the
--       highest token the calling store has seen, '0' = none).
-- Every path that writes begins with an HSET of the record, so that Redis
-- refuses the claim before it changes anything when out of memory (see
-- lib.lua).
local kind, fp, owner = ARGV[3], ARGV[4], ARGV[5]
local lease_ms, retention, floor = tonumber(ARGV[6]), tonumber(ARGV[9]), tonumber(ARGV[10])
local now_us, now = clock()

-- Grants a lease with `token` on the record and in the lease key, and
-- returns the reply.
local function grant(token, fields, takeover)
    local lexp = now + lease_ms
    redis.call('HSET', KEYS[1], 'state', 'processing', 'token', int(token), 'ttl', int(lease_ms),
        'lexp', int(lexp), 'rel', '0', 'updated', int(now), unpack(fields))
    -- What a failure, a retry schedule or a former owner left behind.
    redis.call('HDEL', KEYS[1], 'emsg', 'eretry', 'retry_at', 'ftok')
    if owner ~= '' then
        redis.call('HSET', KEYS[1], 'owner', owner)
    else
        redis.call('HDEL', KEYS[1], 'owner')
    end
    redis.call('SET', KEYS[2], int(token), 'PXAT', int(lexp))
    -- A processing record is kept until its lease ends plus retention, so
    -- an abandoned key is forgotten by Redis without a sweep.
    return settle(lexp + retention, 'acquired', now, takeover and '1' or '0')
end

-- One read of the whole record: the hit paths below answer from it.
local r = read()
local state = r[3]

if not state then
    -- No record, or Redis expired it past retention: a fresh one. Its first
    -- token must exceed any token a deleted predecessor had.
    local token = next_token(now_us, tonumber(redis.call('GET', KEYS[3])), floor)
    local fields = { 'kind', kind, 'attempt', '1', 'max', ARGV[7], 'backoff', ARGV[8],
        'failures', '0', 'created', int(now) }
    if fp ~= '' then
        fields[#fields + 1] = 'fp'
        fields[#fields + 1] = fp
    end
    local out = grant(token, fields, false)
    redis.call('DEL', KEYS[3])
    return out
end

if r[1] ~= kind or (r[2] and fp ~= '' and r[2] ~= fp) then
    return answer('mismatch', now, '', r)
end
if state == 'completed' then
    return answer('completed', now, '', r)
end
local released = r[9] == '1'
if state == 'processing' and lease_left(now, state, r[9], r[8]) > 0 then
    return answer('in_flight', now, '', r)
end
if state == 'failed' and (not r[13] or tonumber(r[13]) > now) then
    return answer('failed', now, '', r)
end

local attempt, max = tonumber(r[5]), tonumber(r[6])
if state == 'processing' and not released and attempt >= max then
    -- An expired lease with no attempt left is not taken over. No `ftok`:
    -- no `fail` made this record failed, so none may claim it did.
    redis.call('HSET', KEYS[1], 'state', 'failed',
        'emsg', 'lease expired on attempt ' .. int(attempt) .. ' of ' .. int(max),
        'eretry', '1', 'failures', int(tonumber(redis.call('HGET', KEYS[1], 'failures')) + 1),
        'updated', int(now))
    redis.call('HDEL', KEYS[1], 'retry_at', 'lexp', 'ftok')
    redis.call('DEL', KEYS[2])
    wake()
    return settle(now + retention, 'failed', now)
end

-- Takeover of an expired lease, retry after backoff, or a new lease after a
-- release (which does not count as an attempt).
local takeover = state == 'processing' and not released
if not released then
    attempt = attempt + 1
end
return grant(next_token(now_us, tonumber(r[4]), floor), { 'attempt', int(attempt) }, takeover)
