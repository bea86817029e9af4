-- deploy --stage-soak: seconds a stage's devices must stay on the new bundle before the next stage.
ALTER TABLE rollouts ADD COLUMN stage_soak DOUBLE PRECISION NOT NULL DEFAULT 0;
