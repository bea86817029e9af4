-- The management API and console (issue 17): API tokens (hashed), the audit log, each device's
-- update history and latency over time, and who created a rollout / what an operator asked of it.
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,  -- SHA-256 of the secret; the secret itself is never stored
    created_at DOUBLE PRECISION NOT NULL,
    created_by TEXT,
    last_used_at DOUBLE PRECISION,
    revoked_at DOUBLE PRECISION
);
CREATE TABLE audit_log (
    id BIGSERIAL PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    actor TEXT NOT NULL,
    role TEXT,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT,
    outcome TEXT NOT NULL
);
CREATE TABLE device_events (
    id BIGSERIAL PRIMARY KEY,
    device_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    phase TEXT,
    current TEXT,
    deployment_id TEXT,
    last_error TEXT
);
CREATE INDEX device_events_by_device ON device_events (device_id, id);
-- id: PostgreSQL has no rowid; pruning keeps the newest rows by it
CREATE TABLE latency_samples (
    device_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    p50 DOUBLE PRECISION,
    p99 DOUBLE PRECISION,
    id BIGSERIAL PRIMARY KEY
);
CREATE INDEX latency_samples_by_device ON latency_samples (device_id, at);
ALTER TABLE rollouts ADD COLUMN created_by TEXT;
-- an operator's pending request (halt, resume, rollback): the fleet server applies it on its next tick
ALTER TABLE rollouts ADD COLUMN request TEXT;
ALTER TABLE rollouts ADD COLUMN request_by TEXT;
