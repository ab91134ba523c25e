-- Transforms write nothing: the sandbox runs its SQL in a READ ONLY transaction and its rows stream
-- into staging over the feature store's own connection. The role keeps no right on staging.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT c.oid::regclass AS rel FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'feature_store_staging'
          AND has_table_privilege('featurepipe_transform', c.oid, 'INSERT')
    LOOP
        EXECUTE format('REVOKE ALL ON %s FROM featurepipe_transform', r.rel);
    END LOOP;
END
$$;
REVOKE ALL ON SCHEMA feature_store_staging FROM featurepipe_transform;
