-- featurepipe schema, version 3: a real sandbox for transformation SQL.
--
-- Transforms used to run under `SET LOCAL ROLE featurepipe_transform` inside a superuser session,
-- which the SQL itself could undo (`set_config('role', ...)`), and row-level security compared
-- tenants with a setting the SQL could change (`set_config('featurepipe.tenant_id', ...)`).
-- Now featurepipe_transform is the *session* user of the connections transforms run on (a login
-- role without superuser, inherited memberships or BYPASSRLS), and the tenant a session may see is
-- recorded by the feature store's own connection in a table the sandbox cannot write, keyed by the
-- sandbox backend's pid and start time, and read through featurepipe_sandbox.current_tenant().

-- Roles are cluster-wide and shared by every featurepipe database of the cluster: only touch the
-- role when its attributes differ (concurrent ALTER ROLEs fail with "tuple concurrently updated").
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'featurepipe_transform') THEN
        BEGIN
            CREATE ROLE featurepipe_transform LOGIN NOSUPERUSER NOINHERIT NOCREATEDB NOCREATEROLE
                NOREPLICATION NOBYPASSRLS;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'featurepipe_transform'
               AND (NOT rolcanlogin OR rolsuper OR rolinherit OR rolcreatedb OR rolcreaterole
                    OR rolreplication OR rolbypassrls)) THEN
        ALTER ROLE featurepipe_transform LOGIN NOSUPERUSER NOINHERIT NOCREATEDB NOCREATEROLE
            NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;

-- Which tenant each live sandbox session may see. Written only by the feature store's own
-- connection; the sandbox role has no privilege on it.
CREATE UNLOGGED TABLE feature_store.sandbox_sessions (
    pid            integer PRIMARY KEY,
    backend_start  timestamptz NOT NULL,
    tenant_id      text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- The one object of featurepipe a transform may use: source-table policies call it.
CREATE SCHEMA featurepipe_sandbox;
CREATE FUNCTION featurepipe_sandbox.current_tenant() RETURNS text
    LANGUAGE sql STABLE SECURITY DEFINER PARALLEL SAFE
    SET search_path = pg_catalog, pg_temp
AS $$
    SELECT s.tenant_id
    FROM feature_store.sandbox_sessions s
    WHERE s.pid = pg_backend_pid()
      AND s.backend_start = (SELECT a.backend_start FROM pg_stat_get_activity(pg_backend_pid()) a)
$$;
COMMENT ON FUNCTION featurepipe_sandbox.current_tenant() IS
    'The tenant the current featurepipe transform session may read; NULL outside one. Use it in '
    'source-table policies: CREATE POLICY featurepipe_tenant ON t FOR SELECT TO featurepipe_transform '
    'USING (tenant_id = (SELECT featurepipe_sandbox.current_tenant()))';
REVOKE ALL ON FUNCTION featurepipe_sandbox.current_tenant() FROM PUBLIC;
GRANT USAGE ON SCHEMA featurepipe_sandbox TO featurepipe_transform;
GRANT EXECUTE ON FUNCTION featurepipe_sandbox.current_tenant() TO featurepipe_transform;

-- What version 1 granted broadly is re-granted table by table by `apply` from now on, only for
-- tables that are tenant-isolated or declared shared.
DO $$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT DISTINCT n.nspname
        FROM pg_namespace n
        WHERE has_schema_privilege('featurepipe_transform', n.oid, 'USAGE')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'public', 'featurepipe_sandbox',
                                'feature_store_staging')
          AND n.nspname NOT LIKE 'pg\_%'
    LOOP
        EXECUTE format('REVOKE ALL ON ALL TABLES IN SCHEMA %I FROM featurepipe_transform', r.nspname);
        EXECUTE format('REVOKE USAGE ON SCHEMA %I FROM featurepipe_transform', r.nspname);
    END LOOP;
END
$$;

-- Source declarations of the applied repos: schemas transforms may read, tables shared across
-- tenants on purpose, and expectations on source rows.
CREATE TABLE feature_store.source_schemas (
    schema_name  text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE feature_store.source_tables (
    table_name      text PRIMARY KEY,          -- schema.table
    shared          boolean NOT NULL DEFAULT false,
    tenant_column   text,
    time_column     text,
    key_column      text,
    expectations    jsonb NOT NULL DEFAULT '{}',
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Corrective reruns that may replace newer online values are explicit and recorded.
ALTER TABLE feature_store.materialization_jobs
    ADD COLUMN online_overwrite boolean NOT NULL DEFAULT false,
    ADD COLUMN overwrite_reason text,
    ADD CHECK (NOT online_overwrite OR overwrite_reason IS NOT NULL);
