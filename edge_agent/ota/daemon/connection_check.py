"""`edge-agent serve --check-connection`: log in to the broker once, exactly as the service would.

`edge-device setup` runs it on the device before it (re)starts the service, so a wrong login or a
wrong CA is one line and its own exit code at setup time, not a service retrying in the journal.
With several broker URLs it tries them in the service's order and names the one that answered (or
each one that did not). The check connects without a last will and publishes nothing.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from ...errors import AgentError
from ..broker_failover import first_that_answers
from ..broker_url import BrokerAddress
from .config import AgentConfig
from .mqtt_link import make_client, refusal_line


class BrokerLoginRefused(AgentError):
    code_name = "broker-login"


class BrokerUnreachable(AgentError):
    code_name = "connection-failed"


def check_connection(config: AgentConfig, timeout_s: float = 10.0) -> dict[str, Any]:
    """Log in to each broker URL in turn, as the service would, until one accepts; disconnect. The result
    names the broker that accepted. Raises BrokerLoginRefused when none accepted and one refused the login
    (else BrokerUnreachable); the line names each broker tried and what it said."""
    login, address, failures = first_that_answers(
        config.broker_addresses(), lambda _index, a: _log_in_once(config, a, timeout_s),
        (BrokerLoginRefused, BrokerUnreachable), _gave_up)
    return {"ok": True, "broker": address.url, "username": login, "tls": address.tls,
            "failed": [str(f) for f in failures]}


def _gave_up(failures: list[Exception]) -> AgentError:
    """No broker accepted: a refused login decides the error (and exit code) if any broker refused one."""
    kind = BrokerLoginRefused if any(isinstance(f, BrokerLoginRefused) for f in failures) else BrokerUnreachable
    return kind("; ".join(str(f) for f in failures))


def _log_in_once(config: AgentConfig, address: BrokerAddress, timeout_s: float) -> str | None:
    """Connect to `address`, wait for its answer, disconnect; the user name it accepted."""
    client = make_client(config, address)
    answer: list[Any] = []
    answered = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        answer.append(reason_code)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(address.host, address.port, keepalive=config.keepalive_s)
    except ssl.SSLError as exc:
        raise BrokerUnreachable(f"TLS with the broker {address.url} failed: "
                                f"{getattr(exc, 'verify_message', None) or exc.reason or exc} "
                                "(is --mqtt-tls-ca the CA that signed the broker's certificate?)") from None
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker {address.url}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise BrokerUnreachable(f"the broker {address.url} did not answer within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if answer[0].is_failure:
        raise BrokerLoginRefused(refusal_line(config, answer[0], address))
    return config.login_for(address)[0]
