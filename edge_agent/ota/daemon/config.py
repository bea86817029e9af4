"""How `edge-agent serve` connects and behaves."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...bundle import TrustStore
from ...errors import AgentError
from ..broker_url import parse_broker_url


class AgentConfigError(AgentError, ValueError):
    code_name = "usage"
    kind = "config"


@dataclass
class AgentConfig:
    """Everything `edge-agent serve` was told on its command line."""

    broker: str
    device_id: str
    profile_name: str
    latency_budget_ms: float | None
    trust: TrustStore
    prefix: str = "edgekit"
    username: str | None = None
    password: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    telemetry_interval_s: float = 10.0
    infer_interval_s: float = 0.05
    threads: int | None = None
    block_retry_s: float = 3.0
    keepalive_s: int = 30
    # After an update switches models, watch the new one on live inputs for this long; if too many of its
    # inferences fail (daemon.probation), switch back to the previous slot and report rolled_back. 0 = off.
    probation_s: float = 60.0
    source: str | None = None  # camera/stream/video/images to run the model on (default: self-test inputs)
    results: str | None = None  # JSON-lines file for per-frame results with --source ("-" = stdout)
    extra: dict = field(default_factory=dict)

    def login(self) -> tuple[str | None, str | None]:
        """(user name, password): the explicit ones, else those in the broker URL."""
        if self.username is not None:
            return self.username, self.password
        try:
            a = parse_broker_url(self.broker, force_tls=self.tls_ca is not None)
        except ValueError as exc:
            raise AgentConfigError(str(exc)) from None
        return a.username, a.password

    def broker_address(self) -> tuple[str, int, bool]:
        try:
            a = parse_broker_url(self.broker, force_tls=self.tls_ca is not None)
        except ValueError as exc:
            raise AgentConfigError(str(exc)) from None
        return a.host, a.port, a.tls
