-- featurepipe schema, version 8: tenant scope of feature groups.
-- A group is shared (owner_tenant_id NULL: every active tenant) or owned by one tenant (only that
-- tenant plans, reads or sees it). A tenant's settings of a shared group switch it off for that
-- tenant or override what makes sense per tenant; NULL means "the group's own value".
ALTER TABLE feature_store.feature_groups
    ADD COLUMN IF NOT EXISTS owner_tenant_id text REFERENCES feature_store.tenants (id);
CREATE INDEX IF NOT EXISTS feature_groups_owner ON feature_store.feature_groups (owner_tenant_id);

CREATE TABLE IF NOT EXISTS feature_store.tenant_group_settings (
    tenant_id                 text NOT NULL REFERENCES feature_store.tenants (id) ON DELETE CASCADE,
    feature_group_id          text NOT NULL REFERENCES feature_store.feature_groups (id) ON DELETE CASCADE,
    enabled                   boolean NOT NULL DEFAULT true,
    online_enabled            boolean,
    offline_enabled           boolean,
    ttl_seconds               integer CHECK (ttl_seconds > 0),
    max_failure_rate          double precision CHECK (max_failure_rate BETWEEN 0 AND 1),
    freshness_target_seconds  integer CHECK (freshness_target_seconds > 0),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, feature_group_id)
);

-- What each tenant sees: its own groups and the shared ones, with its overrides applied (for SQL
-- readers such as freshness; the registry builds the same join in Python, see registry.py), so a
-- group owned by another tenant is simply not there.
CREATE OR REPLACE VIEW feature_store.tenant_feature_groups AS
SELECT t.id AS tenant_id,
       g.id,
       g.owner_tenant_id,
       coalesce(s.enabled, true) AS enabled,
       g.entity_type,
       g.description,
       coalesce(s.online_enabled, g.online_enabled) AS online_enabled,
       coalesce(s.offline_enabled, g.offline_enabled) AS offline_enabled,
       coalesce(s.ttl_seconds, g.ttl_seconds) AS ttl_seconds,
       g.status,
       coalesce(s.max_failure_rate, g.max_failure_rate) AS max_failure_rate,
       coalesce(s.freshness_target_seconds, g.freshness_target_seconds) AS freshness_target_seconds
FROM feature_store.tenants t
JOIN feature_store.feature_groups g ON g.owner_tenant_id IS NULL OR g.owner_tenant_id = t.id
LEFT JOIN feature_store.tenant_group_settings s
    ON s.tenant_id = t.id AND s.feature_group_id = g.id AND g.owner_tenant_id IS NULL;
