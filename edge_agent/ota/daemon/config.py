"""How `edge-agent serve` connects and behaves."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from ...bundle import TrustStore


class AgentConfigError(ValueError):
    exit_code = 2
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

    def broker_address(self) -> tuple[str, int, bool]:
        u = urllib.parse.urlparse(self.broker)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl") or not u.hostname:
            raise AgentConfigError(f"broker URL {self.broker!r} must look like mqtt://host:1883 or mqtts://host:8883")
        tls = u.scheme in ("mqtts", "ssl") or self.tls_ca is not None
        return u.hostname, u.port or (8883 if tls else 1883), tls
