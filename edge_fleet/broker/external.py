"""An external broker: one that someone else runs (Mosquitto, EMQX, HiveMQ, a cluster).

The fleet only connects to it, so start/stop do nothing; the handle exists so the fleet
server treats an embedded and an external broker the same way (`url`, `host`, `port`).
"""

from __future__ import annotations

from ..mqtt import MqttSettings
from .base import Broker


class ExternalBroker(Broker):
    """A broker at `url` (mqtt://[user:pass@]host[:port] or mqtts://..., or a comma list of the nodes of a
    cluster; host and port are the first node's) that edge-fleet does not manage."""

    kind = "external"
    managed = False

    def __init__(self, url: str) -> None:
        first = MqttSettings(url=url).addresses()[0]
        super().__init__(first.host, first.port, None, tls=first.tls)
        self._url = url
        self._serving = False

    @property
    def url(self) -> str:
        """The URL as given (it may carry a login the fleet needs)."""
        return self._url

    @property
    def running(self) -> bool:
        return self._serving

    def _start(self) -> None:
        self._serving = True  # nothing to start: whether it answers shows when the fleet connects

    def _stop(self) -> None:
        self._serving = False
