-- featurepipe schema, version 14: alert routing, alert state (one alert per breach) and the outbox of
-- notifications the orchestrator delivers.
CREATE TABLE IF NOT EXISTS feature_store.alert_routing (
    id          boolean PRIMARY KEY DEFAULT true CHECK (id),
    routing     jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per breach key ('not_fresh:acme/user_engagement'): firing while it lasts, resolved after.
CREATE TABLE IF NOT EXISTS feature_store.alerts (
    key               text PRIMARY KEY,
    kind              text NOT NULL,
    tenant_id         text,
    feature_group_id  text,
    feature_name      text,
    status            text NOT NULL CHECK (status IN ('firing', 'resolved')),
    summary           text NOT NULL,
    opened_at         timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at       timestamptz
);

-- One row per (transition, channel); delivered_at stays NULL until a notifier delivered it.
CREATE TABLE IF NOT EXISTS feature_store.alert_outbox (
    id                bigserial PRIMARY KEY,
    alert_key         text NOT NULL,
    kind              text NOT NULL,
    state             text NOT NULL CHECK (state IN ('firing', 'resolved')),
    channel           text NOT NULL,
    tenant_id         text,
    feature_group_id  text,
    feature_name      text,
    title             text NOT NULL,
    text              text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    delivered_at      timestamptz,
    attempts          integer NOT NULL DEFAULT 0,
    last_error        text
);
CREATE INDEX IF NOT EXISTS alert_outbox_pending ON feature_store.alert_outbox (id) WHERE delivered_at IS NULL;
