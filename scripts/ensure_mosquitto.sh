#!/usr/bin/env bash
# Install the Mosquitto MQTT broker via apt-get if it is missing (the fleet's embedded broker; the code
# falls back to amqtt, and the tests that need Mosquitto fail with a clear message, when it cannot be).
exec bash "$(dirname "$0")/ensure_apt.sh" mosquitto mosquitto /usr/sbin/mosquitto /usr/local/sbin/mosquitto
