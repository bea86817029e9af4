-- deploy --source-url: devices download over HTTP(S) from this URL template instead of MQTT blocks.
ALTER TABLE rollouts ADD COLUMN source_url TEXT;
