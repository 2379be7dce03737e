-- The onceflight function library (Redis 7 FUNCTIONs), shared part.
--
-- The store assembles one library from the files in lua/: this file first,
-- then each operation's file, which registers that operation's function
-- (`register` below), so that each atomic operation still has a file of its
-- own while the helpers here are defined once, when the library is loaded,
-- and not again on every call. Each operation is one FCALL. The library's
-- name is `onceflight_` and a hash of the assembled code, put in place of
-- @LIBRARY@ below; its functions are named `<library>_<operation>`. Each
-- version of the store thus brings its own functions, and two versions can
-- run side by side on one Redis during a rolling upgrade.
--
-- Keys of one request (they share one hash tag, so one cluster slot), named
-- `<prefix>{<tag>}:record:<request key>` and `<prefix>{<tag>}:fence:<request
-- key>`, where the prefix holds no braces:
--   keys[1]  the record: one string, its fields (below) packed with
--            cmsgpack as one array, written with SET … PXAT. Its expiry is the lease's
--            end plus retention while processing (so Redis itself forgets
--            an abandoned record, with nobody sweeping) and the settling
--            instant plus retention once completed or failed. The lease
--            lives in the record: whether it is live is judged with Redis's
--            clock (TIME) against its end.
--   keys[2]  the fence: after `delete`, the last token as a decimal string,
--            kept as long as the record would have been, so tokens keep
--            increasing
--
-- Records of the previous layout (a hash at the same key, fields `kind fp
-- state token attempt max backoff ttl owner lexp rel result emsg eretry
-- failures retry_at created updated done exp ftok`, states spelt out, `rel`
-- and `eretry` as '1' | '0', and a lease key `…:lease:<key>` holding the
-- token with the same end as `lexp`) are still honoured: `load` reads such
-- a hash when GET finds one, and the first operation that writes the
-- record replaces it with the packed string. `lexp` and the lease key were
-- always written together with the same end, so the hash alone says
-- whether the lease is live; the old lease key expires by itself.
--
-- Out of memory (`maxmemory` reached under `noeviction`): the flags of each
-- function decide. `claim` has none, so Redis refuses it whole, before it
-- runs, and the store then asks `claim_ro` (flag `no-writes`, allowed under
-- OOM), which answers the claims that only read (in flight, completed,
-- failed, mismatch) and refuses the rest. renew, complete, fail, release
-- and delete carry `allow-oom`: work already granted can always finish.
-- `get` is `no-writes`.
--
-- Record fields, in packing order (absent values are `false`, so that the
-- array has no holes); those a hit on a completed record answers come
-- first, so that a claim decodes only them (claim.lua):
--   format (FORMAT), state ('p' processing | 'c' completed | 'f' failed),
--   kind, fp, token, attempt, done (completed at), exp (retention end, the
--   key's expiry), result, max, backoff (ms), ttl (lease ms), owner, lexp
--   (lease end, ms; false once settled), rel (true once released), emsg,
--   eretry (boolean), failures, retry_at (ms), created, updated, ftok (the
--   token of the `fail` that made the record failed; false when a claim
--   did, on an expired lease with no attempts left).
-- Instants are milliseconds of Redis's clock (TIME), never the client's.
--
-- Arguments are few on purpose: each costs Redis about as much as a small
-- command. The wake-up channel and the request key, which only a settling
-- operation needs, are read from keys[1] (`wake`).

local LIBRARY = '@LIBRARY@'

-- The first value of every record this library writes; a record of another
-- format is refused, not misread.
local FORMAT = 1

-- The packed array's header: 3 bytes (`0xdc` and a 16-bit length) for
-- 16 to 65535 values. The values follow one after another as msgpack
-- objects of their own, so a claim decodes the first few with
-- `cmsgpack.unpack_limit(packed, n, HEADER)`.
local HEADER = 3

local STATE, KIND, FP, TOKEN, ATTEMPT, DONE, EXP, RESULT, MAX, BACKOFF, TTL, OWNER, LEXP, REL,
    EMSG, ERETRY, FAILURES, RETRY_AT, CREATED, UPDATED, FTOK =
    2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22

local STATE_NAMES = { p = 'processing', c = 'completed', f = 'failed' }

-- Tokens stay below 2^53 (safe in JavaScript).
local MAX_TOKEN = 9007199254740991

-- Registers `callback` as the function `<library>_<name>` with `flags`.
local function register(name, flags, callback)
    redis.register_function { function_name = LIBRARY .. '_' .. name, callback = callback, flags = flags }
end

-- Lua numbers are doubles; '%.0f' writes integers below 2^53 exactly, where
-- tostring would switch to exponent notation. Numbers returned to the
-- client need no such care: Redis turns them into integers itself.
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

local function number_or_false(text)
    return tonumber(text) or false
end

-- A record with every field absent.
local function blank()
    return {
        FORMAT, false, false, false, false, false, false, false, false, false, false, false,
        false, false, false, false, false, false, false, false, false, false
    }
end

-- A record of the previous layout, a hash at `key`, as a record of this one.
local function legacy(key)
    local h = redis.call('HGETALL', key)
    local f = {}
    for i = 1, #h, 2 do
        f[h[i]] = h[i + 1]
    end
    local state = ({ processing = 'p', completed = 'c', failed = 'f' })[f.state]
    if not state then
        error('onceflight: the hash at ' .. key .. ' is not a record')
    end
    local r = blank()
    r[STATE], r[KIND], r[FP], r[TOKEN], r[ATTEMPT] =
        state, f.kind, f.fp or false, tonumber(f.token), tonumber(f.attempt)
    r[DONE], r[EXP], r[RESULT], r[MAX], r[BACKOFF], r[TTL], r[OWNER] =
        number_or_false(f.done), tonumber(f.exp), f.result or false, tonumber(f.max),
        tonumber(f.backoff), tonumber(f.ttl), f.owner or false
    r[LEXP], r[REL], r[EMSG], r[ERETRY], r[FAILURES], r[RETRY_AT] =
        state == 'p' and number_or_false(f.lexp), f.rel == '1', f.emsg or false, f.eretry ~= '0',
        tonumber(f.failures) or 0, number_or_false(f.retry_at)
    r[CREATED], r[UPDATED], r[FTOK] = tonumber(f.created), tonumber(f.updated), number_or_false(f.ftok)
    return r
end

-- The record at `key` from `packed`, what GET answered there (or the error
-- it raised): a table of the record's fields, or nil when there is none.
local function decode(key, packed)
    if type(packed) == 'string' then
        local r = cmsgpack.unpack(packed)
        if type(r) ~= 'table' or r[1] ~= FORMAT then
            error('onceflight: the record at ' .. key .. ' has an unknown format')
        end
        return r
    end
    if not packed then
        return nil
    end
    if redis.call('TYPE', key).ok == 'hash' then
        return legacy(key)
    end
    error(packed.err)
end

-- The record at `key`, or nil. One GET; only a key of another type costs
-- more (see the top).
local function load(key)
    return decode(key, redis.pcall('GET', key))
end

-- Writes `r` to `key`, to be kept until `exp` (ms, Redis's clock). Should
-- `exp` be now or past, Redis drops the record at once; the operation's
-- reply, built from `r`, still describes what it did.
local function save(key, r, exp)
    r[EXP] = exp
    redis.call('SET', key, cmsgpack.pack(r), 'PXAT', int(exp))
end

-- The whole record as the client reads it: { outcome, now, state, kind, fp,
-- token, attempt, max, owner, lexp, lease_left, result, emsg, eretry (1 |
-- 0), retry_after, created, updated, done, exp }, absent values nil.
-- `lease_left` and `retry_after` are judged at `now`.
local function view(outcome, r, now)
    local lexp, left, retry, eretry = false, false, false, false
    if r[STATE] == 'p' then
        lexp = r[LEXP]
        left = r[REL] and 0 or math.max(0, lexp - now)
    end
    if r[STATE] == 'f' and r[RETRY_AT] then
        retry = math.max(0, r[RETRY_AT] - now)
    end
    if r[EMSG] then
        eretry = r[ERETRY] and 1 or 0
    end
    return {
        outcome, now, STATE_NAMES[r[STATE]], r[KIND], r[FP], r[TOKEN], r[ATTEMPT], r[MAX],
        r[OWNER], lexp, left, r[RESULT], r[EMSG], eretry, retry, r[CREATED], r[UPDATED], r[DONE],
        r[EXP]
    }
end

-- Whether `token` is the current token of the processing, unreleased record
-- `r`: the fence every renew, complete, fail and release passes.
local function holds(r, token)
    return r ~= nil and r[STATE] == 'p' and r[TOKEN] == token and not r[REL]
end

-- The answer of a fenced operation whose token `holds` refused: the same
-- call repeated after its reply was lost — the record `settled` (state 'c'
-- or 'f') with `token`, and for a failure made by that `fail` (`ftok`), not
-- by a claim — succeeds again, changing nothing; anything else lost the
-- lease.
local function not_held(r, token, settled)
    if r and r[STATE] == settled and r[TOKEN] == token and (settled == 'c' or r[FTOK] == token) then
        local _, now = clock()
        return view('ok', r, now)
    end
    return { 'lost' }
end

-- Wakes waiters on every instance: publishes the request's key on
-- `<prefix>wake`, both read from the record's key `<prefix>{<tag>}:record:
-- <request key>` (the prefix holds no braces, so the first `{` opens the
-- tag, and the first `}:record:` closes it).
local function wake(keys)
    local record = keys[1]
    local open = string.find(record, '{', 1, true)
    local _, close = string.find(record, '}:record:', open, true)
    redis.call('PUBLISH', string.sub(record, 1, open - 1) .. 'wake', string.sub(record, close + 1))
end
