-- onceflight schema. Objects are created unqualified: the store sets the
-- connection's search_path to its configured schema, so one database can hold
-- several independent onceflight schemas.

-- Fencing tokens: one sequence, so a key's tokens strictly increase even after
-- its record is deleted or expires. Capped at 2^53 - 1 (safe in JavaScript).
CREATE SEQUENCE onceflight_tokens AS bigint MAXVALUE 9007199254740991;

CREATE TABLE onceflight_records (
    key              text        PRIMARY KEY,
    kind             text        NOT NULL,
    fingerprint      text,
    state            text        NOT NULL CHECK (state IN ('processing', 'completed', 'failed')),
    token            bigint      NOT NULL,
    attempt          integer     NOT NULL,
    max_attempts     integer     NOT NULL,
    retry_backoff_ms bigint      NOT NULL,
    lease_ttl_ms     bigint      NOT NULL,
    owner            text,
    -- The lease's end while processing (the release instant once released);
    -- NULL for a terminal record.
    lease_expires_at timestamptz,
    -- The lease was given up: its token is retired and the next lease does
    -- not count as an attempt.
    released         boolean     NOT NULL DEFAULT false,
    result           bytea,
    error_message    text,
    error_retryable  boolean,
    -- Retryable failures so far: the backoff doubles with each.
    failures         integer     NOT NULL DEFAULT 0,
    retry_at         timestamptz,
    created_at       timestamptz NOT NULL,
    updated_at       timestamptz NOT NULL,
    completed_at     timestamptz,
    -- Retention: past it, every operation treats the record as absent.
    expires_at       timestamptz NOT NULL
);

CREATE INDEX onceflight_records_expires_at ON onceflight_records (expires_at);

-- Wakes waiters on every instance: channel `onceflight`, payload
-- `<schema>:<key>`.
CREATE FUNCTION onceflight_notify(p_key text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('onceflight', current_schema() || ':' || p_key);
$$;

-- The one atomic decision of design §3, in one round trip.
--
-- The hit path (a live lease, a result, a failure with no retry due, a
-- mismatch) is a plain snapshot read: no row lock, no transaction id, no WAL.
-- Only when a write is due (fresh record, takeover, retry, re-claim after a
-- release, exhausted lease) does it lock the row and decide again on the
-- latest version, so two claims never both win. A fresh insert that loses a
-- race (ON CONFLICT … WHERE past retention finds a live row) reads again: no
-- unique violation ever reaches the caller.
CREATE FUNCTION onceflight_claim(
    p_key text, p_kind text, p_fingerprint text, p_owner text,
    p_lease_ms bigint, p_max_attempts integer, p_backoff_ms bigint, p_retention_ms bigint)
RETURNS TABLE (outcome text, takeover boolean, db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz;
    v_lease interval := p_lease_ms * interval '1 millisecond';
    v_retention interval := p_retention_ms * interval '1 millisecond';
    v_locked boolean := false;
    v_takeover boolean;
BEGIN
    LOOP
        IF v_locked THEN
            SELECT * INTO r FROM onceflight_records t WHERE t.key = p_key FOR UPDATE;
        ELSE
            SELECT * INTO r FROM onceflight_records t WHERE t.key = p_key;
        END IF;
        v_now := clock_timestamp();

        IF NOT FOUND OR r.expires_at <= v_now THEN
            INSERT INTO onceflight_records AS t (
                key, kind, fingerprint, state, token, attempt, max_attempts,
                retry_backoff_ms, lease_ttl_ms, owner, lease_expires_at, released,
                result, error_message, error_retryable, failures, retry_at,
                created_at, updated_at, completed_at, expires_at)
            VALUES (
                p_key, p_kind, p_fingerprint, 'processing', nextval('onceflight_tokens'), 1,
                p_max_attempts, p_backoff_ms, p_lease_ms, p_owner, v_now + v_lease, false,
                NULL, NULL, NULL, 0, NULL, v_now, v_now, NULL, v_now + v_lease + v_retention)
            ON CONFLICT (key) DO UPDATE SET
                kind = EXCLUDED.kind, fingerprint = EXCLUDED.fingerprint,
                state = EXCLUDED.state, token = EXCLUDED.token, attempt = EXCLUDED.attempt,
                max_attempts = EXCLUDED.max_attempts,
                retry_backoff_ms = EXCLUDED.retry_backoff_ms,
                lease_ttl_ms = EXCLUDED.lease_ttl_ms, owner = EXCLUDED.owner,
                lease_expires_at = EXCLUDED.lease_expires_at, released = false,
                result = NULL, error_message = NULL, error_retryable = NULL, failures = 0,
                retry_at = NULL, created_at = EXCLUDED.created_at,
                updated_at = EXCLUDED.updated_at, completed_at = NULL,
                expires_at = EXCLUDED.expires_at
            WHERE t.expires_at <= v_now
            RETURNING * INTO r;
            IF FOUND THEN
                RETURN QUERY SELECT 'acquired'::text, false, v_now, r;
                RETURN;
            END IF;
            -- Another claim created the record first: decide on it.
            v_locked := false;
            CONTINUE;
        END IF;

        IF r.kind <> p_kind
           OR (r.fingerprint IS NOT NULL AND p_fingerprint IS NOT NULL
               AND r.fingerprint <> p_fingerprint) THEN
            RETURN QUERY SELECT 'mismatch'::text, false, v_now, r;
            RETURN;
        END IF;
        IF r.state = 'completed' THEN
            RETURN QUERY SELECT 'completed'::text, false, v_now, r;
            RETURN;
        END IF;
        IF r.state = 'processing' AND NOT r.released AND r.lease_expires_at > v_now THEN
            RETURN QUERY SELECT 'in_flight'::text, false, v_now, r;
            RETURN;
        END IF;
        IF r.state = 'failed' AND (r.retry_at IS NULL OR r.retry_at > v_now) THEN
            RETURN QUERY SELECT 'failed'::text, false, v_now, r;
            RETURN;
        END IF;

        -- A write is due: lock the row and decide again on its latest version.
        IF NOT v_locked THEN
            v_locked := true;
            CONTINUE;
        END IF;

        IF r.state = 'processing' AND NOT r.released AND r.attempt >= r.max_attempts THEN
            -- An expired lease with no attempt left is not taken over.
            UPDATE onceflight_records t SET
                state = 'failed',
                error_message = format('lease expired on attempt %s of %s', r.attempt, r.max_attempts),
                error_retryable = true, failures = r.failures + 1, retry_at = NULL,
                lease_expires_at = NULL, updated_at = v_now, expires_at = v_now + v_retention
            WHERE t.key = p_key
            RETURNING * INTO r;
            PERFORM onceflight_notify(p_key);
            RETURN QUERY SELECT 'failed'::text, false, v_now, r;
            RETURN;
        END IF;

        -- Takeover of an expired lease, retry after backoff, or a new lease
        -- after a release (which does not count as an attempt).
        v_takeover := r.state = 'processing' AND NOT r.released;
        UPDATE onceflight_records t SET
            state = 'processing', token = nextval('onceflight_tokens'),
            attempt = CASE WHEN r.released THEN r.attempt ELSE r.attempt + 1 END,
            owner = p_owner, lease_ttl_ms = p_lease_ms, lease_expires_at = v_now + v_lease,
            released = false, error_message = NULL, error_retryable = NULL, retry_at = NULL,
            updated_at = v_now, expires_at = v_now + v_lease + v_retention
        WHERE t.key = p_key
        RETURNING * INTO r;
        RETURN QUERY SELECT 'acquired'::text, v_takeover, v_now, r;
        RETURN;
    END LOOP;
END
$$;

-- Fenced operations: each one statement, succeeding only for the current
-- token of a processing record (or, for complete and fail, repeating the same
-- successful call). `outcome` is 'ok' or 'lost'.

CREATE FUNCTION onceflight_renew(p_key text, p_token bigint, p_lease_ms bigint, p_retention_ms bigint)
RETURNS TABLE (outcome text, db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz := clock_timestamp();
BEGIN
    UPDATE onceflight_records t SET
        lease_expires_at = v_now + coalesce(p_lease_ms, t.lease_ttl_ms) * interval '1 millisecond',
        updated_at = v_now,
        expires_at = v_now + coalesce(p_lease_ms, t.lease_ttl_ms) * interval '1 millisecond'
                     + p_retention_ms * interval '1 millisecond'
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'processing'
      AND NOT t.released AND t.expires_at > v_now
    RETURNING * INTO r;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_complete(p_key text, p_token bigint, p_result bytea, p_retention_ms bigint)
RETURNS TABLE (outcome text, db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz := clock_timestamp();
BEGIN
    UPDATE onceflight_records t SET
        state = 'completed', result = p_result, completed_at = v_now, lease_expires_at = NULL,
        updated_at = v_now, expires_at = v_now + p_retention_ms * interval '1 millisecond'
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'processing'
      AND NOT t.released AND t.expires_at > v_now
    RETURNING * INTO r;
    IF FOUND THEN
        PERFORM onceflight_notify(p_key);
        RETURN QUERY SELECT 'ok'::text, v_now, r;
        RETURN;
    END IF;
    -- The same token repeating a successful complete: the first result stands.
    SELECT * INTO r FROM onceflight_records t
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'completed' AND t.expires_at > v_now;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_fail(p_key text, p_token bigint, p_message text, p_retryable boolean, p_retention_ms bigint)
RETURNS TABLE (outcome text, db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz := clock_timestamp();
BEGIN
    UPDATE onceflight_records t SET
        state = 'failed', error_message = p_message, error_retryable = p_retryable,
        failures = t.failures + CASE WHEN p_retryable THEN 1 ELSE 0 END,
        -- Backoff: base × 2^(failures − 1), capped at one hour.
        retry_at = CASE WHEN p_retryable AND t.attempt < t.max_attempts
            THEN v_now + least(t.retry_backoff_ms * power(2::numeric, t.failures), 3600000)
                         * interval '1 millisecond'
            END,
        lease_expires_at = NULL, updated_at = v_now,
        expires_at = v_now + p_retention_ms * interval '1 millisecond'
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'processing'
      AND NOT t.released AND t.expires_at > v_now
    RETURNING * INTO r;
    IF FOUND THEN
        PERFORM onceflight_notify(p_key);
        RETURN QUERY SELECT 'ok'::text, v_now, r;
        RETURN;
    END IF;
    -- The same token repeating a successful fail: the first error stands.
    SELECT * INTO r FROM onceflight_records t
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'failed' AND t.expires_at > v_now;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_release(p_key text, p_token bigint, p_retention_ms bigint)
RETURNS TABLE (outcome text, db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz := clock_timestamp();
BEGIN
    UPDATE onceflight_records t SET
        released = true, lease_expires_at = v_now, updated_at = v_now,
        expires_at = v_now + p_retention_ms * interval '1 millisecond'
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'processing'
      AND NOT t.released AND t.expires_at > v_now
    RETURNING * INTO r;
    IF FOUND THEN
        PERFORM onceflight_notify(p_key);
    END IF;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_delete(p_key text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_live boolean;
BEGIN
    DELETE FROM onceflight_records t WHERE t.key = p_key
    RETURNING t.expires_at > clock_timestamp() INTO v_live;
    IF FOUND THEN
        PERFORM onceflight_notify(p_key);
    END IF;
    RETURN coalesce(v_live, false);
END
$$;
