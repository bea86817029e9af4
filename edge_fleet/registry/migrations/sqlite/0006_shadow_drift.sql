-- Shadow runs and drift (issue 19): a rollout's shadow gate, each target's shadow report, and the
-- device's last shadow report and drift state as it reported them (JSON, NULL when none).
ALTER TABLE rollouts ADD COLUMN shadow TEXT;
ALTER TABLE rollout_devices ADD COLUMN shadow TEXT;
ALTER TABLE devices ADD COLUMN shadow TEXT;
ALTER TABLE devices ADD COLUMN drift TEXT;
