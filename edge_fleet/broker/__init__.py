"""MQTT brokers for the fleet: one module per kind behind the small `Broker` interface.

``start_broker()`` runs a local Mosquitto 2.x as a child process (preferred: fast, persistent,
ACLs, TLS) or, when no ``mosquitto`` binary is installed, the pure-Python ``amqtt`` broker in a
background thread of this process. ``ExternalBroker`` stands for a broker run elsewhere.

    base.py              the Broker interface, shared helpers, stop-at-exit
    mosquitto_config.py  PURE: settings -> mosquitto.conf text
    mosquitto.py         managed Mosquitto child process
    amqtt.py             in-process amqtt (fallback)
    external.py          a broker someone else runs (connect only)
    start.py             start_broker(): choose and start a managed kind
"""

from __future__ import annotations

from ..errors import BrokerStartError, BrokerUnavailable
from .amqtt import AmqttBroker, amqtt_available
from .base import Broker
from .external import ExternalBroker
from .mosquitto import MosquittoBroker, find_mosquitto
from .mosquitto_config import MosquittoSettings, TlsListener, render_mosquitto_config
from .start import BrokerKind, start_broker

__all__ = ["AmqttBroker", "Broker", "BrokerKind", "BrokerStartError", "BrokerUnavailable", "ExternalBroker",
           "MosquittoBroker", "MosquittoSettings", "TlsListener", "amqtt_available", "find_mosquitto",
           "render_mosquitto_config", "start_broker"]
