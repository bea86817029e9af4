"""How `edge-agent serve` connects and behaves."""

from __future__ import annotations

from dataclasses import dataclass, field

from device_profiles import Limits

from ...bundle import TrustStore
from ...errors import AgentError
from ..broker_url import BrokerAddress, parse_broker_urls, split_broker_urls


class AgentConfigError(AgentError, ValueError):
    code_name = "usage"
    kind = "config"


@dataclass
class AgentConfig:
    """Everything `edge-agent serve` was told on its command line."""

    broker: str  # one MQTT URL, or several separated by commas: the nodes of a clustered broker, tried in turn
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
    infer_interval_s: float = 30.0  # without --source: a health probe on the self-test inputs, nothing more
    threads: int | None = None
    block_retry_s: float = 3.0
    keepalive_s: int = 30
    # After an update switches models, watch the new one on live inputs for this long; if too many of its
    # inferences fail (daemon.probation), switch back to the previous slot and report rolled_back. 0 = off.
    probation_s: float = 60.0
    source: str | None = None  # camera/stream/video/images to run the model on (default: self-test inputs)
    results: str | None = None  # JSON-lines file for per-frame results with --source ("-" = stdout)
    # Drift of --source frames against the served bundle's reference statistics (edge_agent.monitor.drift).
    drift_window: int = 200
    drift_threshold: float = 0.25
    metrics_port: int | None = None  # Prometheus /metrics (drift series) on metrics_host; None: off
    metrics_host: str = "127.0.0.1"
    extra: dict = field(default_factory=dict)
    profile_limits: Limits | None = None  # the loaded profile's limits: a user's file is not found by its name

    def broker_urls(self) -> list[str]:
        """The broker URLs in the order the agent tries them (`broker` split at commas)."""
        return split_broker_urls(self.broker)

    def broker_addresses(self) -> list[BrokerAddress]:
        """Every broker URL parsed; AgentConfigError (one line) if one is bad or they mix TLS and plain:
        the TLS settings are made once, for all of them."""
        if not self.broker_urls():
            raise AgentConfigError("no broker URL: pass --broker mqtt://host:1883 (or set EDGE_AGENT_BROKER)")
        try:
            return parse_broker_urls(self.broker, force_tls=self.tls_ca is not None)
        except ValueError as exc:
            raise AgentConfigError(str(exc)) from None

    def login_for(self, address: BrokerAddress) -> tuple[str | None, str | None]:
        """(user name, password): the explicit ones, else those in that broker's URL."""
        if self.username is not None:
            return self.username, self.password
        return address.username, address.password
