-- Every onceflight function resolves the objects it names in its own
-- schema, whatever search_path the calling session has. The store calls the
-- functions schema-qualified and sets no search_path, so it works through a
-- transaction-mode pooler (which neither passes start-up options on nor
-- keeps session settings) without a role-wide `ALTER ROLE … SET
-- search_path`. A function added by a later migration gets the same setting.
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
