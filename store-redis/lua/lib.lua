-- Shared by every onceflight script: prepended to each operation's file when
-- the store builds its scripts, so each operation is still one EVALSHA.
--
-- Keys of one request (all share one hash tag, so one cluster slot):
--   KEYS[1]  the record, a hash (fields below); its TTL is the retention
--   KEYS[2]  the lease, a string holding the token, written with
--            SET … PXAT so that Redis itself retires an abandoned lease
--   KEYS[3]  the fence: after `delete`, the last token, kept as long as the
--            record would have been, so tokens keep increasing
--
-- Out of memory (`maxmemory` reached under `noeviction`): these scripts
-- carry no flags, so Redis (6.2 and 7 alike) checks memory before a
-- script's first write command that may grow memory (HSET, SET) and never
-- after it, since a script cannot stop halfway. The order of writes is
-- therefore chosen on purpose: every writing path of a claim begins with
-- an HSET of the record, so Redis refuses a claim under OOM before it
-- changes anything (hits, which only read, are still answered); renew,
-- complete, fail, release and delete begin with a write Redis does not
-- check (HDEL, DEL, PEXPIREAT), so work already granted can always finish.
--
-- Record fields: kind, fp, state (processing | completed | failed), token,
-- attempt, max, backoff (ms), ttl (lease ms), owner, lexp (lease end, ms),
-- rel ('1' once released), result, emsg, eretry ('1' | '0'), failures,
-- retry_at (ms), created, updated, done (completed at), exp (retention end),
-- ftok (the token of the `fail` that made the record failed; absent when a
-- claim did, on an expired lease with no attempts left).
-- Instants are milliseconds of Redis's clock (TIME), never the client's.

local FIELDS = {
    'kind', 'fp', 'state', 'token', 'attempt', 'max', 'owner', 'lexp', 'rel',
    'result', 'emsg', 'eretry', 'retry_at', 'created', 'updated', 'done', 'exp', 'ttl'
}

-- Tokens stay below 2^53 (safe in JavaScript).
local MAX_TOKEN = 9007199254740991

-- Lua numbers are doubles; '%.0f' writes integers below 2^53 exactly, where
-- tostring would switch to exponent notation.
local function int(n)
    return string.format('%.0f', n)
end

-- Redis's clock, in microseconds and milliseconds.
local function clock()
    local t = redis.call('TIME')
    local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
    return us, math.floor(us / 1000)
end

-- A new fencing token: Redis's clock in microseconds, or one more than the
-- last token of this key (`last`), or one more than the highest token the
-- calling store has seen (`floor`), whichever is highest. See the crate
-- docs for why this keeps tokens increasing without a counter kept forever.
local function next_token(now_us, last, floor)
    local token = now_us
    if last and last + 1 > token then
        token = last + 1
    end
    if floor and floor + 1 > token then
        token = floor + 1
    end
    if token > MAX_TOKEN then
        error('onceflight: fencing tokens exhausted')
    end
    return token
end

-- Time left on the lease of a processing record, in ms: zero once released
-- or once Redis expired the lease key; nil for a terminal record.
local function lease_left(now, state, rel, lexp)
    if state ~= 'processing' then
        return nil
    end
    if rel == '1' or redis.call('PTTL', KEYS[2]) <= 0 then
        return 0
    end
    return math.max(0, tonumber(lexp) - now)
end

-- The record's FIELDS, in order (absent ones false).
local function read()
    return redis.call('HMGET', KEYS[1], unpack(FIELDS))
end

-- The reply every script shares: { outcome, now, extra, lease_left,
-- FIELDS… } as strings, absent values as nil. `r` is the record as `read`
-- returned it, when the script has not changed it since; otherwise it is
-- read again.
local function answer(outcome, now, extra, r)
    r = r or read()
    local left = false
    if r[3] then
        local l = lease_left(now, r[3], r[9], r[8])
        if l then
            left = int(l)
        end
    end
    local out = { outcome, int(now), extra or '', left }
    for i = 1, #FIELDS do
        out[#out + 1] = r[i]
    end
    return out
end

-- Keeps the record until `exp` (ms, Redis's clock) and returns
-- `answer(outcome, now, extra)`, built before the expiry is set: should
-- `exp` be now or past, Redis drops the record at once, and the reply must
-- still describe what the operation did.
local function settle(exp, outcome, now, extra)
    redis.call('HSET', KEYS[1], 'exp', int(exp))
    local out = answer(outcome, now, extra)
    redis.call('PEXPIREAT', KEYS[1], int(exp))
    return out
end

-- Whether `token` is the current token of a processing, unreleased record:
-- the fence every renew, complete, fail and release passes.
local function holds(token)
    local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'rel')
    return r[1] == 'processing' and r[2] == token and r[3] ~= '1'
end

-- Wakes waiters on every instance: the channel is ARGV[1], the payload the
-- request's key, ARGV[2].
local function wake()
    redis.call('PUBLISH', ARGV[1], ARGV[2])
end

-- A record already completed with `token`: the same call repeated after its
-- reply was lost succeeds again, changing nothing.
local function repeated_complete(token)
    local r = redis.call('HMGET', KEYS[1], 'state', 'token')
    return r[1] == 'completed' and r[2] == token
end

-- A record made failed by a `fail` with `token` (not by a claim that found
-- the lease expired with no attempts left): the same `fail` repeated after
-- its reply was lost succeeds again, changing nothing.
local function repeated_fail(token)
    local r = redis.call('HMGET', KEYS[1], 'state', 'token', 'ftok')
    return r[1] == 'failed' and r[2] == token and r[3] == token
end
