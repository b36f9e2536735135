-- Metered usage per client per hour: one row per (key, hour), bumped once per accepted detection.
CREATE TABLE api_usage (
    key_id        text NOT NULL,
    tenant        text NOT NULL,
    hour          timestamptz NOT NULL,
    requests      bigint NOT NULL DEFAULT 0,
    audio_seconds double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour)
);
CREATE INDEX api_usage_tenant_hour ON api_usage (tenant, hour);
