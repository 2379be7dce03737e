-- A deletion reaches every result cache.
--
-- Servers may keep completed results in memory (a hit cache) and must hear
-- when one is deleted on another server. A completed record changes in no
-- other way before its retention ends (and the caches honour retention on
-- their own), so a delete now notifies its key whether or not anyone waits
-- on it. Deleting is an operator's act, rare next to claims and
-- completions, so the cluster-wide commit lock NOTIFY takes costs little
-- here. Servers of the previous release call the same function, and their
-- deletions reach the caches too.
CREATE OR REPLACE FUNCTION onceflight_delete_v2(p_key text)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_live boolean;
BEGIN
    DELETE FROM onceflight_records t WHERE t.key = p_key
    RETURNING t.expires_at > clock_timestamp() INTO v_live;
    IF FOUND THEN
        PERFORM pg_notify('onceflight', current_schema() || ':' || p_key);
    END IF;
    RETURN coalesce(v_live, false);
END
$$;

-- CREATE OR REPLACE resets the function's settings: pin its search_path
-- again, as 20261202000001 does for every onceflight function (see there
-- why).
DO $$
BEGIN
    EXECUTE format('ALTER FUNCTION onceflight_delete_v2(text) SET search_path = %I',
                   current_schema());
END
$$;
