"""Runtime-neutral accuracy search: task metrics, the accuracy budget, calibration-method choice,
layer sensitivity and the mixed-precision fallback. numpy only; runtimes come in as callbacks."""
