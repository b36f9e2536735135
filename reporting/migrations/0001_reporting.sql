-- The reporting store: verdicts, dead letters, ground-truth feedback and hourly metering,
-- written by the faust app (`audioguard report run`) and read by the views below.
CREATE SCHEMA IF NOT EXISTS reporting;

-- One row per (tenant, idempotency key, model version): a replayed or duplicated verdict
-- hits the unique key and changes nothing; a re-score by a new model version is a row of its own.
CREATE TABLE reporting.verdicts (
    id                  bigserial PRIMARY KEY,
    tenant_id           text NOT NULL,
    idempotency_key     text NOT NULL,
    model_version       text NOT NULL,
    model_name          text NOT NULL,
    model_checksum      text NOT NULL,
    content_id          text NOT NULL,
    event_id            text NOT NULL,
    label               text NOT NULL CHECK (label IN ('synthetic', 'bona_fide', 'inconclusive')),
    score               double precision NOT NULL,
    threshold           double precision NOT NULL,
    duration_seconds    double precision NOT NULL,
    queued_seconds      double precision NOT NULL,
    scoring_seconds     double precision NOT NULL,
    end_to_end_seconds  double precision NOT NULL,
    processed_at        timestamptz NOT NULL,
    attempt             integer NOT NULL,
    source_topic        text NOT NULL,
    source_partition    integer NOT NULL,
    source_offset       bigint NOT NULL,
    ingested_at         timestamptz NOT NULL DEFAULT now(),
    payload             jsonb NOT NULL,
    UNIQUE (tenant_id, idempotency_key, model_version)
);
CREATE INDEX verdicts_tenant_time ON reporting.verdicts (tenant_id, processed_at);
CREATE INDEX verdicts_model_time ON reporting.verdicts (model_version, processed_at);

-- One row per dead-letter record, keyed by where it sits in its DLQ topic (a re-delivered
-- record has the same coordinates; a replayed arrival that fails again is a new record).
CREATE TABLE reporting.dead_letters (
    id                  bigserial PRIMARY KEY,
    tenant_id           text NOT NULL,
    dlq_topic           text NOT NULL,
    dlq_partition       integer NOT NULL,
    dlq_offset          bigint NOT NULL,
    error_class         text NOT NULL,
    reason              text NOT NULL,
    category            text NOT NULL,
    attempt             integer NOT NULL,
    first_seen_at       timestamptz NOT NULL,
    last_failed_at      timestamptz NOT NULL,
    worker_id           text NOT NULL,
    model_version       text NOT NULL,
    replay_count        integer NOT NULL,
    payload_size        bigint,
    ingested_at         timestamptz NOT NULL DEFAULT now(),
    envelope            jsonb NOT NULL,
    UNIQUE (dlq_topic, dlq_partition, dlq_offset)
);
CREATE INDEX dead_letters_tenant_time ON reporting.dead_letters (tenant_id, last_failed_at);

-- Moderators' decisions, joined to verdicts by (tenant, idempotency key); the latest decision wins.
CREATE TABLE reporting.feedback (
    tenant_id           text NOT NULL,
    idempotency_key     text NOT NULL,
    truth               text NOT NULL CHECK (truth IN ('synthetic', 'bona_fide')),
    decided_at          timestamptz NOT NULL,
    moderator           text,
    source              text NOT NULL,
    loaded_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, idempotency_key)
);

-- Per tenant per hour, written once when the hour is closed (reporting.close_metering_hours).
CREATE TABLE reporting.metering_hourly (
    tenant_id               text NOT NULL,
    hour                    timestamptz NOT NULL,
    uploads                 bigint NOT NULL,
    audio_seconds_scored    double precision NOT NULL,
    dead_letters            bigint NOT NULL,
    dead_letters_by_reason  jsonb NOT NULL,
    closed_at               timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, hour)
);

-- Close every hour that ended before `before`: insert its metering row unless it is there.
CREATE FUNCTION reporting.close_metering_hours(before timestamptz) RETURNS integer
LANGUAGE sql AS $$
    WITH v AS (
        SELECT tenant_id, date_trunc('hour', processed_at) AS hour,
               count(DISTINCT idempotency_key) AS uploads, sum(duration_seconds) AS audio_seconds
        FROM reporting.verdicts WHERE processed_at < date_trunc('hour', before)
        GROUP BY 1, 2
    ), r AS (
        SELECT tenant_id, date_trunc('hour', last_failed_at) AS hour, reason, count(*) AS n
        FROM reporting.dead_letters WHERE last_failed_at < date_trunc('hour', before)
        GROUP BY 1, 2, 3
    ), d AS (
        SELECT tenant_id, hour, sum(n) AS dead_letters, jsonb_object_agg(reason, n) AS by_reason
        FROM r GROUP BY 1, 2
    ), inserted AS (
        INSERT INTO reporting.metering_hourly
            (tenant_id, hour, uploads, audio_seconds_scored, dead_letters, dead_letters_by_reason)
        SELECT coalesce(v.tenant_id, d.tenant_id), coalesce(v.hour, d.hour),
               coalesce(v.uploads, 0), coalesce(v.audio_seconds, 0),
               coalesce(d.dead_letters, 0), coalesce(d.by_reason, '{}'::jsonb)
        FROM v FULL JOIN d ON v.tenant_id = d.tenant_id AND v.hour = d.hour
        ON CONFLICT (tenant_id, hour) DO NOTHING
        RETURNING 1
    )
    SELECT count(*)::integer FROM inserted
$$;

-- Per tenant per day: what was checked and found, latency, dead letters by reason.
CREATE VIEW reporting.tenant_daily AS
WITH v AS (
    SELECT tenant_id, date_trunc('day', processed_at) AS day,
           count(DISTINCT idempotency_key) AS uploads,
           sum(duration_seconds) / 3600.0 AS audio_hours,
           avg((label = 'synthetic')::int) AS share_synthetic,
           avg((label = 'bona_fide')::int) AS share_bona_fide,
           avg((label = 'inconclusive')::int) AS share_inconclusive,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY end_to_end_seconds) AS p50_end_to_end_seconds,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY end_to_end_seconds) AS p99_end_to_end_seconds
    FROM reporting.verdicts GROUP BY 1, 2
), r AS (
    SELECT tenant_id, date_trunc('day', last_failed_at) AS day, reason, count(*) AS n
    FROM reporting.dead_letters GROUP BY 1, 2, 3
), d AS (
    SELECT tenant_id, day, sum(n)::bigint AS dead_letters, jsonb_object_agg(reason, n) AS dead_letters_by_reason
    FROM r GROUP BY 1, 2
)
SELECT coalesce(v.tenant_id, d.tenant_id) AS tenant_id, coalesce(v.day, d.day) AS day,
       coalesce(v.uploads, 0) AS uploads, coalesce(v.audio_hours, 0) AS audio_hours,
       v.share_synthetic, v.share_bona_fide, v.share_inconclusive,
       v.p50_end_to_end_seconds, v.p99_end_to_end_seconds,
       coalesce(d.dead_letters, 0) AS dead_letters,
       coalesce(d.dead_letters_by_reason, '{}'::jsonb) AS dead_letters_by_reason
FROM v FULL JOIN d ON v.tenant_id = d.tenant_id AND v.day = d.day;

-- Per model version: score distribution, and against feedback the confusion matrix at each
-- verdict's own operating threshold (inconclusive counted apart).
CREATE VIEW reporting.model_versions AS
SELECT v.model_name, v.model_version,
       count(*) AS verdicts,
       avg(v.score) AS mean_score,
       percentile_cont(0.1) WITHIN GROUP (ORDER BY v.score) AS p10_score,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY v.score) AS p50_score,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY v.score) AS p90_score,
       avg((v.label = 'synthetic')::int) AS share_synthetic,
       count(f.truth) AS with_feedback,
       count(*) FILTER (WHERE f.truth = 'synthetic' AND v.label = 'synthetic') AS true_positives,
       count(*) FILTER (WHERE f.truth = 'bona_fide' AND v.label = 'synthetic') AS false_positives,
       count(*) FILTER (WHERE f.truth = 'bona_fide' AND v.label = 'bona_fide') AS true_negatives,
       count(*) FILTER (WHERE f.truth = 'synthetic' AND v.label = 'bona_fide') AS false_negatives,
       count(*) FILTER (WHERE f.truth IS NOT NULL AND v.label = 'inconclusive') AS inconclusive_with_feedback
FROM reporting.verdicts v
LEFT JOIN reporting.feedback f ON f.tenant_id = v.tenant_id AND f.idempotency_key = v.idempotency_key
GROUP BY 1, 2;

-- Slowest tenants: end-to-end latency over the last 24 hours, slowest first.
CREATE VIEW reporting.slowest_tenants AS
SELECT tenant_id, count(*) AS verdicts,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY end_to_end_seconds) AS p50_end_to_end_seconds,
       percentile_cont(0.99) WITHIN GROUP (ORDER BY end_to_end_seconds) AS p99_end_to_end_seconds
FROM reporting.verdicts WHERE processed_at > now() - interval '24 hours'
GROUP BY 1 ORDER BY p99_end_to_end_seconds DESC;

-- Drift: each model version's daily score distribution and synthetic share.
CREATE VIEW reporting.model_daily AS
SELECT model_version, date_trunc('day', processed_at) AS day, count(*) AS verdicts,
       avg(score) AS mean_score, stddev_pop(score) AS stddev_score,
       avg((label = 'synthetic')::int) AS share_synthetic
FROM reporting.verdicts GROUP BY 1, 2;
