#!/usr/bin/env bash
# Install the Mosquitto MQTT broker via apt-get if it is missing.
# Runs `apt-get update` only when a first install attempt fails. Never fails the
# caller: without apt (or root) it prints a warning and exits 0, and the code then
# falls back to amqtt or the tests fail with a clear message.
set -u

have_mosquitto() {
    command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || [ -x /usr/local/sbin/mosquitto ]
}

if have_mosquitto; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_mosquitto: WARNING: mosquitto missing and apt-get unavailable; install it manually" >&2
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        SUDO="sudo -n"
    else
        echo "ensure_mosquitto: WARNING: mosquitto missing and not root (no passwordless sudo); skipping" >&2
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
try_install() { $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null 2>&1; }
if ! try_install; then
    $SUDO apt-get update -qq >/dev/null 2>&1
    try_install
fi
if have_mosquitto; then
    echo "ensure_mosquitto: installed $(mosquitto -h 2>/dev/null | head -n1 || echo mosquitto)"
else
    echo "ensure_mosquitto: WARNING: could not install mosquitto via apt-get" >&2
fi
exit 0
