-- Why the server did not apply an operator's last request (the rollout's status changed before it could,
-- e.g. a resume of a paused rollout that halted itself meanwhile): the waiting API call or CLI answers it as
-- a refusal instead of success. NULL once applied, and whenever a new request is stored.
ALTER TABLE rollouts ADD COLUMN request_refused TEXT;
