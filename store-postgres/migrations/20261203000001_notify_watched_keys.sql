-- Cheap writes and narrow hits.
--
-- 1. A write notifies only when someone waits on its key. A transaction
--    that calls pg_notify takes a lock of the whole cluster at commit and
--    holds it through its WAL flush, so notifying transactions commit one
--    after the other: with fsync on, 8 clients completing records managed
--    about a ninth of the commits per second of the same updates without
--    NOTIFY. Waiters now register their key in `onceflight_watches` (an
--    UNLOGGED table: no WAL flush at commit) and writers notify only a
--    key with a live registration. See `onceflight_watch` and
--    `onceflight_notify_watchers` for why no wake-up is lost.
-- 2. Renewals and completions are HOT updates: the index on `expires_at`,
--    a column they rewrite, is gone (the sweep walks the primary key), and
--    pages keep room for the new row versions (fillfactor).
-- 3. A claim answers only the columns its outcome needs (`Claim::Acquired`,
--    `InFlight`, `Completed` or `Failed`, the record's kind for a mismatch,
--    and the record's retention end), not the whole record.
-- 4. A claim that loses the race to create a record reads the winner's
--    record without a row lock or a transaction id.
--
-- Rolling deploys: the functions whose answer or behaviour changed get new
-- names (`…_v2`). The earlier ones stay as they were, for servers of the
-- previous release, and go on notifying every change; a later migration
-- drops them once no such server runs. Meanwhile a waiter on a server of
-- the previous release registers no interest, so a write by an upgraded
-- server wakes it only at its next fallback re-read (`wait_fallback`).

-- Keys someone waits on, until when. Rows past `until` only cost a
-- spurious notification; the sweep deletes them. UNLOGGED: a crash or a
-- failover empties it, and then every store's LISTEN connection, lost with
-- the server, is replaced and wakes all its waiters, which register again.
CREATE UNLOGGED TABLE onceflight_watches (
    key   text        PRIMARY KEY,
    until timestamptz NOT NULL
);

-- Renewals and completions rewrite `expires_at`: with an index on it, no
-- update of theirs could be HOT (heap-only: no new index entry, and the
-- old version pruned on the page).
DROP INDEX onceflight_records_expires_at;

-- Room on each page for the next version of its rows, so updates stay on
-- their page (a HOT update needs it). Applies to pages written from now on.
ALTER TABLE onceflight_records SET (fillfactor = 85);

-- A transaction-level advisory lock id for one key of this schema:
-- purpose 1 guards the key's watchers (`onceflight_watch`,
-- `onceflight_notify_watchers`), purpose 2 the creation of its record
-- (`onceflight_claim_v2`). Schema, purpose and key are hashed together; a
-- collision with another lock of the database only costs a wait. Advisory
-- locks take no transaction id, write no WAL, and end with their
-- transaction, so they work through a transaction-mode pooler.
CREATE FUNCTION onceflight_lock_id(p_purpose integer, p_key text) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT hashtextextended(current_schema() || ':' || p_key, p_purpose);
$$;

-- Notifies `p_key` (channel `onceflight`, payload `<schema>:<key>`) if
-- someone waits on it. Called by a writer after its change, in the same
-- transaction.
--
-- No wake-up is lost: the writer takes the key's watch lock exclusively
-- after its change and before looking for a registration, and a waiter
-- (`onceflight_watch`) holds it shared while it registers and reads. If
-- the waiter got the lock first, the writer waits for the waiter's commit,
-- and its look (a new statement, so a new snapshot in READ COMMITTED) sees
-- the registration: it notifies. If the writer got it first, the waiter
-- waits for the writer's commit, and its read sees the change.
CREATE FUNCTION onceflight_notify_watchers(p_key text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(onceflight_lock_id(1, p_key));
    IF EXISTS (SELECT 1 FROM onceflight_watches w
               WHERE w.key = p_key AND w.until > clock_timestamp()) THEN
        PERFORM pg_notify('onceflight', current_schema() || ':' || p_key);
    END IF;
END
$$;

-- A waiter's read: the live record of `p_key` (as the store's `get` reads
-- it), and, when the record is still worth waiting for (its lease runs),
-- interest in its next change for at least `p_for_ms` — as long as the
-- waiter may sleep before it reads again. No row if the record is absent or
-- past retention.
--
-- The key's watch lock is held shared from before the read to the commit
-- (see `onceflight_notify_watchers`). A registration still valid for that
-- long is not written again, so a herd of waiters writes about once per
-- `p_for_ms`; a new one is written for twice that. Writes to the UNLOGGED
-- table take a transaction id but no WAL flush at commit.
CREATE FUNCTION onceflight_watch(p_key text, p_for_ms bigint)
RETURNS TABLE (db_now timestamptz, rec onceflight_records)
LANGUAGE plpgsql AS $$
DECLARE
    r onceflight_records;
    v_now timestamptz;
    v_for interval := greatest(p_for_ms, 0) * interval '1 millisecond';
BEGIN
    PERFORM pg_advisory_xact_lock_shared(onceflight_lock_id(1, p_key));
    SELECT * INTO r FROM onceflight_records t WHERE t.key = p_key;
    v_now := clock_timestamp();
    IF NOT FOUND OR r.expires_at <= v_now THEN
        RETURN;
    END IF;
    IF v_for > interval '0' AND r.state = 'processing' AND NOT r.released
       AND r.lease_expires_at > v_now
       AND NOT EXISTS (SELECT 1 FROM onceflight_watches w
                       WHERE w.key = p_key AND w.until >= v_now + v_for) THEN
        INSERT INTO onceflight_watches AS w (key, until)
        VALUES (p_key, v_now + 2 * v_for)
        ON CONFLICT (key) DO UPDATE SET until = greatest(w.until, EXCLUDED.until);
    END IF;
    RETURN QUERY SELECT v_now, r;
END
$$;

-- `onceflight_claim` (docs/protocol.md §3), answering only what its outcome
-- needs, notifying only watched keys, and creating records under the key's
-- creation lock.
--
-- Hits (a live lease, a result, a failure with no retry due, a mismatch)
-- are a plain snapshot read: no row lock, no transaction id, no WAL. A
-- write that is due locks the row and decides again on its latest version,
-- so two claims never both win.
--
-- A claim that finds no live record takes the key's creation lock (an
-- advisory lock: no transaction id) and reads again. Claims racing to
-- create the same record thus take turns: the loser waits for the winner's
-- commit and then reads its record like any hit, without a row lock or a
-- transaction id (and without drawing a token). A claim that holds the row
-- lock already (its record went past retention under it) skips the
-- creation lock, so locks are always taken in the order creation lock, row
-- lock, watch lock. ON CONFLICT DO NOTHING and the `expires_at` condition
-- still settle a race with a claim of the previous release (which takes no
-- creation lock) or the sweep: the claim then reads again. No unique
-- violation ever reaches the caller.
--
-- Columns, by outcome (others NULL; `db_now` always):
--   acquired   token, attempt, lease_ttl_ms, lease_expires_at, takeover,
--              expires_at
--   in_flight  token, attempt, owner, lease_expires_at, expires_at
--   completed  token, attempt, result, completed_at, expires_at
--   failed     token, attempt, error_message, error_retryable, retry_at,
--              expires_at
--   mismatch   kind (the record's)
-- `expires_at` is the record's retention end.
CREATE FUNCTION onceflight_claim_v2(
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
                PERFORM pg_advisory_xact_lock(onceflight_lock_id(2, p_key));
                v_creating := true;
                v_locked := false;
                CONTINUE;
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

-- The fenced writes of the earlier migrations, notifying only watched keys.
-- `outcome` is 'ok' or 'lost'.

CREATE FUNCTION onceflight_complete_v2(p_key text, p_token bigint, p_result bytea, p_retention_ms bigint)
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
        PERFORM onceflight_notify_watchers(p_key);
        RETURN QUERY SELECT 'ok'::text, v_now, r;
        RETURN;
    END IF;
    -- The same token repeating a successful complete: the first result stands.
    SELECT * INTO r FROM onceflight_records t
    WHERE t.key = p_key AND t.token = p_token AND t.state = 'completed' AND t.expires_at > v_now;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_fail_v2(p_key text, p_token bigint, p_message text, p_retryable boolean, p_retention_ms bigint)
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
        PERFORM onceflight_notify_watchers(p_key);
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

CREATE FUNCTION onceflight_release_v2(p_key text, p_token bigint, p_retention_ms bigint)
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
        PERFORM onceflight_notify_watchers(p_key);
    END IF;
    RETURN QUERY SELECT CASE WHEN FOUND THEN 'ok' ELSE 'lost' END, v_now, r;
END
$$;

CREATE FUNCTION onceflight_delete_v2(p_key text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_live boolean;
BEGIN
    DELETE FROM onceflight_records t WHERE t.key = p_key
    RETURNING t.expires_at > clock_timestamp() INTO v_live;
    IF FOUND THEN
        PERFORM onceflight_notify_watchers(p_key);
    END IF;
    RETURN coalesce(v_live, false);
END
$$;

-- New functions pin search_path too, as 20261202000001 does for every
-- onceflight function (see there why).
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
