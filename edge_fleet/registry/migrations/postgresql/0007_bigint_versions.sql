-- Model versions as 64-bit integers, as SQLite's INTEGER already holds them: a CI that numbers its models
-- by date and time (edge-convert --model-version 202612021534) published on SQLite and failed on PostgreSQL.
ALTER TABLE bundles ALTER COLUMN version TYPE BIGINT;
ALTER TABLE rollouts ALTER COLUMN version TYPE BIGINT;
