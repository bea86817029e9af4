-- Several fleet servers on one registry (issue 16): the device's own clock of its latest report
-- (a late, older report is ignored), and leases: which server drives the rollouts until when.
ALTER TABLE devices ADD COLUMN reported_updated_at DOUBLE PRECISION;
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
