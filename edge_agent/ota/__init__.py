"""Over-the-air updates of the served model.

    protocol      MQTT topics and messages (shared with the fleet)
    phases        the update state machine as data: Phase, Event, the transition table
    job           one update job and update.json (schema version, store counter)
    states        one State per phase;  installer: the runner and the install lock
    transfer      MQTT block and HTTP downloads;  slots: A/B slots (lifecycle + health)
    model_check   the install-time model health check (self-test, latency budget)
    live          the served model and the inference loop that survives swaps
    daemon/       `edge-agent serve`, one part per job;  cli: serve/install/rollback/status
"""
