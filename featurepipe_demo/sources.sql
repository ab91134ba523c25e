-- Demo source tables of a multi-tenant chat-assistant platform, with row-level security the way
-- Supabase-style apps have it: a transform that forgot (or subverted) its tenant filter still sees
-- one tenant.
CREATE SCHEMA IF NOT EXISTS app;

CREATE TABLE IF NOT EXISTS app.tenants (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    plan        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS app.users (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES app.tenants (id),
    email       text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS app.conversations (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES app.tenants (id),
    user_id     text NOT NULL REFERENCES app.users (id),
    title       text NOT NULL,
    created_at  timestamptz NOT NULL
);

CREATE TABLE IF NOT EXISTS app.messages (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL REFERENCES app.tenants (id),
    conversation_id  text NOT NULL REFERENCES app.conversations (id),
    user_id          text NOT NULL REFERENCES app.users (id),
    role             text NOT NULL CHECK (role IN ('user', 'assistant')),
    content          text NOT NULL,
    token_count      integer NOT NULL,
    intent           text,
    created_at       timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_tenant_time ON app.messages (tenant_id, created_at);

CREATE TABLE IF NOT EXISTS app.feedback (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL REFERENCES app.tenants (id),
    message_id  text NOT NULL REFERENCES app.messages (id),
    user_id     text NOT NULL REFERENCES app.users (id),
    rating      integer NOT NULL,
    comment     text,
    created_at  timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_tenant_time ON app.feedback (tenant_id, created_at);

-- Tenant isolation for featurepipe's transforms: the sandbox role sees one tenant's rows, the tenant
-- the feature store scoped its session to (not a setting the feature SQL could change). Needs the
-- feature_store schema (`feature-store init`) for featurepipe_sandbox.current_tenant().
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['tenants', 'users', 'conversations', 'messages', 'feedback'] LOOP
        EXECUTE format('ALTER TABLE app.%I ENABLE ROW LEVEL SECURITY', t);
        -- Earlier demo versions compared with a session setting any SQL could change.
        EXECUTE format('DROP POLICY IF EXISTS tenant_isolation ON app.%I', t);
        IF NOT EXISTS (SELECT 1 FROM pg_policies WHERE schemaname = 'app' AND tablename = t
                       AND policyname = 'featurepipe_tenant') THEN
            EXECUTE format(
                'CREATE POLICY featurepipe_tenant ON app.%I FOR SELECT TO featurepipe_transform'
                ' USING (%I = (SELECT featurepipe_sandbox.current_tenant()))',
                t, CASE WHEN t = 'tenants' THEN 'id' ELSE 'tenant_id' END);
        END IF;
    END LOOP;
END
$$;
