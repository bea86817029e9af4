"""Several broker URLs for one paho client: the next one when a connection is lost or refused.

The nodes of a clustered broker (EMQX, HiveMQ, ejabberd) each have an address; a client that knows
them all survives the death of the node it is on. The agent's connection (daemon/mqtt_link.py) and
the fleet server's (edge_fleet/server.py) both use this: paho reconnects by itself (with back-off),
and BrokerRotation points its next attempt at the next address, after the last one back at the
first, so a client also comes back when the node it moved to dies in turn.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence, TypeVar

import paho.mqtt.client as mqtt

from .broker_url import BrokerAddress

log = logging.getLogger(__name__)

LoginFor = Callable[[BrokerAddress], "tuple[str | None, str | None]"]
T = TypeVar("T")


class BrokerRotation:
    """Which of `addresses` a client uses now (`current`, `url`); `failed()` moves the next attempt on."""

    def __init__(self, addresses: Sequence[BrokerAddress], login_for: LoginFor) -> None:
        if not addresses:
            raise ValueError("no broker address")
        self.addresses = list(addresses)
        self.login_for = login_for
        self.index = 0
        self._switch = False  # the connection to `current` failed: the next attempt goes to the next one

    @property
    def current(self) -> BrokerAddress:
        return self.addresses[self.index]

    @property
    def url(self) -> str:
        """The broker in use or being tried, without its login (safe to print)."""
        return self.current.url

    def use(self, client: mqtt.Client, index: int) -> BrokerAddress:
        """Make address `index` the current one and give `client` its login (before a first connect)."""
        self.index, self._switch = index % len(self.addresses), False
        username, password = self.login_for(self.current)
        client.username_pw_set(username, password)
        return self.current

    def failed(self) -> None:
        """The connection to the current broker was lost or refused: paho's next attempt tries the next one."""
        if len(self.addresses) > 1:
            self._switch = True

    def on_pre_connect(self, client: mqtt.Client, _userdata: object) -> None:
        """paho's callback just before its reconnect loop opens a socket: point it at the next broker if one
        failed. paho 2.2's `host`/`port` setters refuse while it is connecting, which is exactly now, so
        the attributes its reconnect() reads are set (paho-mqtt is pinned in pyproject.toml)."""
        if not self._switch:
            return
        a = self.use(client, self.index + 1)
        client._host, client._port = a.host, a.port  # noqa: SLF001 - see the docstring
        log.warning("trying the next broker: %s", self.url)


def first_that_answers(
    addresses: Sequence[BrokerAddress],
    attempt: Callable[[int, BrokerAddress], T],
    retry_on: tuple[type[Exception], ...],
    give_up: Callable[[list[Exception]], Exception],
) -> tuple[T, BrokerAddress, list[Exception]]:
    """Try `attempt(index, address)` on each broker in the order given until one succeeds: the fleet's first
    connect (edge_fleet/mqtt.py) and the agent's `--check-connection` both start this way, each with its own
    errors. An error of `retry_on` moves on to the next broker; any other one propagates. Returns what the
    attempt returned, the broker that answered and the errors of those tried before it; when none answered,
    raises `give_up(errors)` (the caller picks the error type, so its exit code stays its own)."""
    failures: list[Exception] = []
    for index, address in enumerate(addresses):
        try:
            return attempt(index, address), address, failures
        except retry_on as exc:
            failures.append(exc)
    raise give_up(failures)
