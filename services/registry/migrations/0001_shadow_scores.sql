-- One row per upload scored in shadow: the champion's verdict (what the customer got) beside
-- the challenger's (what it would have got). Never read by anything a customer sees.
CREATE TABLE shadow_scores (
    id bigserial PRIMARY KEY,
    tenant text NOT NULL,
    idempotency_key text NOT NULL,
    content_id text NOT NULL,
    champion_version text NOT NULL,
    champion_label text NOT NULL,
    champion_score double precision NOT NULL,
    challenger_version text NOT NULL,
    challenger_label text NOT NULL,
    challenger_score double precision NOT NULL,
    windows integer NOT NULL,
    champion_seconds_per_window double precision NOT NULL,
    challenger_seconds_per_window double precision NOT NULL,
    worker_id text NOT NULL,
    scored_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX shadow_scores_by_pair ON shadow_scores (challenger_version, champion_version, tenant);
