-- The registry as first released (PostgreSQL dialect of sqlite/0001): bundles, devices, rollouts
-- and each rollout's devices. JSON stays in TEXT columns, as in SQLite: the same code reads both.
CREATE TABLE bundles (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    profile TEXT NOT NULL,
    size BIGINT NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    path TEXT NOT NULL,
    published_at DOUBLE PRECISION NOT NULL,
    UNIQUE (name, version, profile)
);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    profile TEXT,
    grp TEXT,
    current TEXT,
    previous TEXT,
    target TEXT,
    phase TEXT,
    deployment_id TEXT,
    progress DOUBLE PRECISION,
    last_error TEXT,
    agent_version TEXT,
    reported_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION,
    presence TEXT,
    presence_at DOUBLE PRECISION,
    latency TEXT,
    inferences BIGINT,
    errors BIGINT,
    telemetry_at DOUBLE PRECISION
);
CREATE TABLE rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    stages TEXT NOT NULL,
    stage INTEGER NOT NULL DEFAULT -1,
    stage_started_at DOUBLE PRECISION,
    max_failures DOUBLE PRECISION NOT NULL,
    stage_timeout DOUBLE PRECISION NOT NULL,
    reason TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    device_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    bundle_sha TEXT,
    previous_sha TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    sent_at DOUBLE PRECISION,
    done_at DOUBLE PRECISION,
    PRIMARY KEY (rollout_id, device_id)
);
CREATE INDEX rollout_devices_by_device ON rollout_devices (device_id);
