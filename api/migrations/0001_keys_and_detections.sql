-- API keys: the secret is never stored, only its scrypt hash (api.keys).
CREATE TABLE api_keys (
    key_id      text PRIMARY KEY,
    tenant      text NOT NULL,
    name        text NOT NULL,
    scopes      text[] NOT NULL,
    secret_hash text NOT NULL,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX api_keys_tenant ON api_keys (tenant);

-- One row per accepted detection; (tenant, idempotency_key) is what makes a repeated
-- POST with the same Idempotency-Key the same detection.
CREATE TABLE api_detections (
    id              text PRIMARY KEY,
    tenant          text NOT NULL,
    idempotency_key text NOT NULL,
    client_key      text,
    request_sha256  text NOT NULL,
    content_id      text NOT NULL,
    audio_uri       text NOT NULL,
    sha256          text,
    byte_size       bigint,
    key_id          text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    UNIQUE (tenant, idempotency_key)
);
