-- The sha256 of the arrival bytes the API published: a worker's dead letter records the
-- sha256 of the payload it could not score, so the two name the same arrival on every transport.
ALTER TABLE api_detections ADD COLUMN arrival_sha256 text;
