-- A `fail` whose lease a claim already ended is refused, as `complete` is.
--
-- When a claim finds an expired lease with no attempt left, it turns the
-- record `failed` itself. That record keeps the token of the lease that
-- expired, so the same-token repeat check of `onceflight_fail` used to take a
-- late `fail` with that token for a repeat of one that succeeded, and answer
-- success. Now the claim also marks the record `released`: the lease was
-- ended by the store, its token is retired. `onceflight_fail` repeats a
-- success only for a record that a `fail` itself made `failed` (never
-- released), so the late call is `lost`.
--
-- Records failed this way before this migration keep `released = false`;
-- a late `fail` on one of them still answers success, as it did before.

COMMENT ON COLUMN onceflight_records.released IS
    'The current token is retired before its lease ran its course: its holder '
    'gave the lease up (release; the record stays processing and the next lease '
    'does not count as an attempt), or a claim found the lease expired with no '
    'attempt left and failed the record. No fenced call with that token '
    'succeeds again.';

CREATE OR REPLACE FUNCTION onceflight_claim(
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
            -- An expired lease with no attempt left is not taken over; its
            -- token is retired, so a late fail with it is lost.
            UPDATE onceflight_records t SET
                state = 'failed', released = true,
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

CREATE OR REPLACE FUNCTION onceflight_fail(p_key text, p_token bigint, p_message text, p_retryable boolean, p_retention_ms bigint)
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
    -- The same token repeating a successful fail: the first error stands. A
    -- record a claim failed (its lease expired with no attempt left) is
    -- released, and was never failed with this token.
    SELECT * INTO r FROM onceflight_records t
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'failed' AND NOT t.released
      AND t.expires_at > v_now;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

-- CREATE OR REPLACE resets a function's settings: pin search_path again, as
-- the earlier migration does for every onceflight function.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN
        SELECT p.oid::regprocedure
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = current_schema() AND p.proname LIKE 'onceflight\_%'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I', f, current_schema());
    END LOOP;
END
$$;
