-- Webhooks: each key gets a signing secret (HMAC-SHA256; kept readable, as signing needs it);
-- one delivery row per detection that asked for a callback_url.
ALTER TABLE api_keys ADD COLUMN webhook_secret text NOT NULL DEFAULT '';

CREATE TABLE api_webhooks (
    detection_id    text PRIMARY KEY REFERENCES api_detections (id),
    tenant          text NOT NULL,
    url             text NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);
CREATE INDEX api_webhooks_due ON api_webhooks (next_attempt_at) WHERE state = 'pending';
