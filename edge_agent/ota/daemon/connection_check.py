"""`edge-agent serve --check-connection`: log in to the broker once, exactly as the service would.

`edge-device setup` runs it on the device before it (re)starts the service, so a wrong login or a
wrong CA is one line and its own exit code at setup time, not a service retrying in the journal.
The check connects without a last will and publishes nothing.
"""

from __future__ import annotations

import ssl
import threading
from typing import Any

from ...errors import AgentError
from .config import AgentConfig
from .mqtt_link import make_client, refusal_line


class BrokerLoginRefused(AgentError):
    code_name = "broker-login"


class BrokerUnreachable(AgentError):
    code_name = "connection-failed"


def check_connection(config: AgentConfig, timeout_s: float = 10.0) -> dict[str, Any]:
    """Connect, wait for the broker's answer, disconnect. Raises BrokerLoginRefused or BrokerUnreachable."""
    host, port, tls = config.broker_address()
    client = make_client(config)
    answer: list[Any] = []
    answered = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        answer.append(reason_code)
        answered.set()

    client.on_connect = on_connect
    try:
        client.connect(host, port, keepalive=config.keepalive_s)
    except ssl.SSLError as exc:
        raise BrokerUnreachable(f"TLS with the broker {config.broker} failed: {getattr(exc, 'verify_message', None) or exc.reason or exc} "
                                "(is --mqtt-tls-ca the CA that signed the broker's certificate?)") from None
    except OSError as exc:
        raise BrokerUnreachable(f"cannot reach the broker {config.broker}: {exc.strerror or exc}") from None
    client.loop_start()
    try:
        if not answered.wait(timeout_s):
            raise BrokerUnreachable(f"the broker {config.broker} did not answer within {timeout_s:g} s")
    finally:
        client.disconnect()
        client.loop_stop()
    if answer[0].is_failure:
        raise BrokerLoginRefused(refusal_line(config, answer[0]))
    return {"ok": True, "broker": config.broker, "username": config.login()[0], "tls": tls}
