-- A claim of a key with no record inserts without reading twice.
--
-- `onceflight_claim_v2` took the key's creation lock (an advisory lock)
-- and then read the key again before inserting, so that the losers of a
-- race to create a record waited for the winner and then read its record
-- like any hit. Now a claim that finds no record tries the creation lock
-- without waiting: when nobody else holds it, it inserts at once, and the
-- read after the lock is skipped. A claim that finds the lock held (another
-- claim is creating the record) waits for it and reads the winner's record
-- as before: no row lock, no transaction id, no token drawn. A record past
-- retention is still taken over after waiting for the lock and reading
-- again. ON CONFLICT DO NOTHING still settles the rare race with a claim
-- that finished creating between this claim's read and its try.
--
-- Same signature and outcomes as before; servers of the previous release
-- call the same function.
CREATE OR REPLACE FUNCTION onceflight_claim_v2(
    p_key text, p_kind text, p_fingerprint text, p_owner text,
    p_lease_ms bigint, p_max_attempts integer, p_backoff_ms bigint, p_retention_ms bigint,
    OUT outcome text, OUT takeover boolean, OUT db_now timestamptz,
    OUT token bigint, OUT attempt integer, OUT kind text, OUT owner text,
    OUT lease_ttl_ms bigint, OUT lease_expires_at timestamptz, OUT result bytea,
    OUT completed_at timestamptz, OUT error_message text, OUT error_retryable boolean,
    OUT retry_at timestamptz, OUT expires_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r onceflight_records;
    v_found boolean;
    v_now timestamptz;
    v_lease interval := p_lease_ms * interval '1 millisecond';
    v_retention interval := p_retention_ms * interval '1 millisecond';
    -- The last read locked the row (FOR UPDATE).
    v_locked boolean := false;
    -- This claim holds the key's creation lock.
    v_creating boolean := false;
BEGIN
    LOOP
        IF v_locked THEN
            SELECT * INTO r FROM onceflight_records t WHERE t.key = p_key FOR UPDATE;
        ELSE
            SELECT * INTO r FROM onceflight_records t WHERE t.key = p_key;
        END IF;
        v_found := FOUND;
        v_now := clock_timestamp();
        db_now := v_now;

        IF NOT v_found OR r.expires_at <= v_now THEN
            IF NOT v_creating AND NOT (v_found AND v_locked) THEN
                -- No record, and no other claim creating one: create it
                -- at once, holding the creation lock.
                IF NOT v_found
                   AND pg_try_advisory_xact_lock(onceflight_lock_id(2, p_key)) THEN
                    v_creating := true;
                ELSE
                    -- Another claim is creating it (or the record is past
                    -- retention): wait for the creation lock, then read
                    -- what the holder left.
                    PERFORM pg_advisory_xact_lock(onceflight_lock_id(2, p_key));
                    v_creating := true;
                    v_locked := false;
                    CONTINUE;
                END IF;
            END IF;
            IF v_found THEN
                -- Past retention: the record starts over.
                UPDATE onceflight_records t SET
                    kind = p_kind, fingerprint = p_fingerprint, state = 'processing',
                    token = nextval('onceflight_tokens'), attempt = 1,
                    max_attempts = p_max_attempts, retry_backoff_ms = p_backoff_ms,
                    lease_ttl_ms = p_lease_ms, owner = p_owner,
                    lease_expires_at = v_now + v_lease, released = false, result = NULL,
                    error_message = NULL, error_retryable = NULL, failures = 0,
                    retry_at = NULL, created_at = v_now, updated_at = v_now,
                    completed_at = NULL, expires_at = v_now + v_lease + v_retention
                WHERE t.key = p_key AND t.expires_at <= v_now
                RETURNING * INTO r;
            ELSE
                INSERT INTO onceflight_records AS t (
                    key, kind, fingerprint, state, token, attempt, max_attempts,
                    retry_backoff_ms, lease_ttl_ms, owner, lease_expires_at, released,
                    result, error_message, error_retryable, failures, retry_at,
                    created_at, updated_at, completed_at, expires_at)
                VALUES (
                    p_key, p_kind, p_fingerprint, 'processing', nextval('onceflight_tokens'),
                    1, p_max_attempts, p_backoff_ms, p_lease_ms, p_owner, v_now + v_lease,
                    false, NULL, NULL, NULL, 0, NULL, v_now, v_now, NULL,
                    v_now + v_lease + v_retention)
                ON CONFLICT (key) DO NOTHING
                RETURNING * INTO r;
            END IF;
            IF FOUND THEN
                outcome := 'acquired';
                takeover := false;
                token := r.token;
                attempt := r.attempt;
                lease_ttl_ms := r.lease_ttl_ms;
                lease_expires_at := r.lease_expires_at;
                expires_at := r.expires_at;
                RETURN;
            END IF;
            -- A claim of the previous release or the sweep got there first:
            -- decide on what it left.
            v_locked := false;
            CONTINUE;
        END IF;

        IF r.kind <> p_kind
           OR (r.fingerprint IS NOT NULL AND p_fingerprint IS NOT NULL
               AND r.fingerprint <> p_fingerprint) THEN
            outcome := 'mismatch';
            kind := r.kind;
            RETURN;
        END IF;
        IF r.state = 'completed' THEN
            outcome := 'completed';
            token := r.token;
            attempt := r.attempt;
            result := r.result;
            completed_at := coalesce(r.completed_at, r.updated_at);
            expires_at := r.expires_at;
            RETURN;
        END IF;
        IF r.state = 'processing' AND NOT r.released AND r.lease_expires_at > v_now THEN
            outcome := 'in_flight';
            token := r.token;
            attempt := r.attempt;
            owner := r.owner;
            lease_expires_at := r.lease_expires_at;
            expires_at := r.expires_at;
            RETURN;
        END IF;
        IF r.state = 'failed' AND (r.retry_at IS NULL OR r.retry_at > v_now) THEN
            outcome := 'failed';
            token := r.token;
            attempt := r.attempt;
            error_message := r.error_message;
            error_retryable := r.error_retryable;
            retry_at := r.retry_at;
            expires_at := r.expires_at;
            RETURN;
        END IF;

        -- A write is due: lock the row and decide again on its latest version.
        IF NOT v_locked THEN
            v_locked := true;
            CONTINUE;
        END IF;

        IF r.state = 'processing' AND NOT r.released AND r.attempt >= r.max_attempts THEN
            -- An expired lease with no attempt left is not taken over; its
            -- token is retired, so a late fail with it is lost.
            UPDATE onceflight_records t SET
                state = 'failed', released = true,
                error_message = format('lease expired on attempt %s of %s', r.attempt, r.max_attempts),
                error_retryable = true, failures = r.failures + 1, retry_at = NULL,
                lease_expires_at = NULL, updated_at = v_now, expires_at = v_now + v_retention
            WHERE t.key = p_key
            RETURNING * INTO r;
            PERFORM onceflight_notify_watchers(p_key);
            outcome := 'failed';
            token := r.token;
            attempt := r.attempt;
            error_message := r.error_message;
            error_retryable := r.error_retryable;
            expires_at := r.expires_at;
            RETURN;
        END IF;

        -- Takeover of an expired lease, retry after backoff, or a new lease
        -- after a release (which does not count as an attempt).
        takeover := r.state = 'processing' AND NOT r.released;
        UPDATE onceflight_records t SET
            state = 'processing', token = nextval('onceflight_tokens'),
            attempt = CASE WHEN r.released THEN r.attempt ELSE r.attempt + 1 END,
            owner = p_owner, lease_ttl_ms = p_lease_ms, lease_expires_at = v_now + v_lease,
            released = false, error_message = NULL, error_retryable = NULL, retry_at = NULL,
            updated_at = v_now, expires_at = v_now + v_lease + v_retention
        WHERE t.key = p_key
        RETURNING * INTO r;
        outcome := 'acquired';
        token := r.token;
        attempt := r.attempt;
        lease_ttl_ms := r.lease_ttl_ms;
        lease_expires_at := r.lease_expires_at;
        expires_at := r.expires_at;
        RETURN;
    END LOOP;
END
$$;

-- CREATE OR REPLACE resets the function's settings: pin its search_path
-- again, as 20261202000001 does for every onceflight function (see there
-- why).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION onceflight_claim_v2(text, text, text, text, bigint, integer, bigint, bigint) SET search_path = %I',
                   current_schema());
END
$$;
