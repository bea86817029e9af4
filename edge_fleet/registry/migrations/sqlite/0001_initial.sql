-- The registry as first released: bundles, devices, rollouts and each rollout's devices.
-- IF NOT EXISTS: a registry file made before versioned migrations already has these tables.
CREATE TABLE IF NOT EXISTS bundles (
    sha256 TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    profile TEXT NOT NULL,
    size INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    path TEXT NOT NULL,
    published_at REAL NOT NULL,
    UNIQUE (name, version, profile)
);
CREATE TABLE IF NOT EXISTS devices (
    id TEXT PRIMARY KEY,
    profile TEXT,
    grp TEXT,
    current TEXT,
    previous TEXT,
    target TEXT,
    phase TEXT,
    deployment_id TEXT,
    progress REAL,
    last_error TEXT,
    agent_version TEXT,
    reported_at REAL,
    last_seen REAL,
    presence TEXT,
    presence_at REAL,
    latency TEXT,
    inferences INTEGER,
    errors INTEGER,
    telemetry_at REAL
);
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    status TEXT NOT NULL,
    stages TEXT NOT NULL,
    stage INTEGER NOT NULL DEFAULT -1,
    stage_started_at REAL,
    max_failures REAL NOT NULL,
    stage_timeout REAL NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rollout_devices (
    rollout_id TEXT NOT NULL REFERENCES rollouts(id),
    device_id TEXT NOT NULL,
    stage INTEGER NOT NULL,
    bundle_sha TEXT,
    previous_sha TEXT,
    status TEXT NOT NULL,
    reason TEXT,
    sent_at REAL,
    done_at REAL,
    PRIMARY KEY (rollout_id, device_id)
);
