"""The agent's home folder: trusted keys, the device's profile, and (for OTA) slots and state.

Default `~/.edgekit/agent`, overridden by `--home` or the EDGE_AGENT_HOME variable.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .bundle import TrustStore, VerifiedBundle, key_id, load_public_key, verify_bundle
from .bundle.errors import SignatureError
from .ota.broker_url import split_broker_urls


def default_home() -> Path:
    return Path(os.environ.get("EDGE_AGENT_HOME") or Path.home() / ".edgekit" / "agent")


@dataclass(frozen=True)
class AgentHome:
    root: Path

    @property
    def trusted_dir(self) -> Path:
        return self.root / "trusted"

    @property
    def profile_file(self) -> Path:
        return self.root / "profile"

    @property
    def broker_file(self) -> Path:
        """The fleet's broker URL(s), one a line or comma-separated, for `edge-agent serve` without --broker."""
        return self.root / "broker"

    def broker_urls(self, explicit: list[str] | None = None) -> str | None:
        """The broker URLs as one comma list: --broker (repeatable, each may be a comma list), else
        EDGE_AGENT_BROKER, else the home's `broker` file; None when none is set."""
        if explicit:
            chosen = explicit
        elif os.environ.get("EDGE_AGENT_BROKER"):
            chosen = [os.environ["EDGE_AGENT_BROKER"]]
        elif self.broker_file.is_file():
            chosen = self.broker_file.read_text().split()
        else:
            return None
        return ",".join(split_broker_urls(chosen)) or None

    @property
    def slots_dir(self) -> Path:
        """A/B slots of installed bundles (edge_agent.ota.slots)."""
        return self.root / "slots"

    @property
    def cache_dir(self) -> Path:
        """Caches libraries keep (ONNX Runtime's device id and database would otherwise go to ~/.cache)."""
        return self.root / "cache"

    def keep_caches_inside(self) -> None:
        """Point this process's XDG cache at the home, before a runtime is imported: the daemon writes
        nothing outside its home."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        os.environ["XDG_CACHE_HOME"] = str(self.cache_dir)

    @property
    def ota_dir(self) -> Path:
        """Update state machine file and download staging (edge_agent.ota.installer)."""
        return self.root / "ota"

    def trust_store(self, extra: list[Path] | None = None) -> TrustStore:
        """Keys given on the command line, else the keys trusted in this home."""
        if extra:
            return TrustStore.from_paths(extra)
        if self.trusted_dir.is_dir():
            return TrustStore.from_paths([self.trusted_dir])
        return TrustStore({})

    def add_trusted_key(self, pub: Path) -> str:
        """Copy a public key into the trusted folder, named by its key id."""
        key = load_public_key(pub)
        kid = key_id(key)
        self.trusted_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pub, self.trusted_dir / f"{kid}.pub")
        return kid

    def device_profile(self, explicit: str | None = None) -> str | None:
        """The device's profile name or path: --profile, else EDGE_AGENT_PROFILE, else home's file.

        `auto` (in any of them) detects the board like `edge-agent doctor` does."""
        chosen = self._chosen_profile(explicit)
        if chosen == "auto":
            from device_profiles.facts import collect_local, parse_facts
            from device_profiles.matching import match_profile

            match = match_profile(parse_facts(collect_local(self.root)))
            if match.profile is None:
                from device_profiles import ProfileError

                raise ProfileError(f"--profile auto: {match.reason}")
            return match.profile
        return chosen

    def _chosen_profile(self, explicit: str | None) -> str | None:
        if explicit:
            return explicit
        if os.environ.get("EDGE_AGENT_PROFILE"):
            return os.environ["EDGE_AGENT_PROFILE"]
        if self.profile_file.is_file():
            return self._from_home(self.profile_file.read_text().strip()) or None
        return None

    def _from_home(self, chosen: str) -> str:
        """A relative profile FILE in the home's `profile` file is the home's: the service runs from / (systemd's
        default), so `rk3588.toml` there was looked up in whatever folder the agent was started from."""
        path = Path(chosen).expanduser()
        if chosen and not path.is_absolute() and (path.suffix in (".toml", ".json") or "/" in chosen):
            return str(self.root / path)
        return chosen


def require_trust(trust: TrustStore) -> TrustStore:
    if not trust:
        raise SignatureError(
            "no trusted keys: pass --trust PATH/TO/signing.pub, or run `edge-agent trust add signing.pub` once"
        )
    return trust


@contextmanager
def unpacked_bundle(
    bundle: Path, trust: TrustStore, profile: str | None, allow_profile_mismatch: bool = False
) -> Iterator[VerifiedBundle]:
    """Verify a bundle and unpack it into a private temporary folder for the duration."""
    with tempfile.TemporaryDirectory(prefix="edgekit-run-") as tmp:
        yield verify_bundle(
            bundle,
            require_trust(trust),
            profile=profile,
            allow_profile_mismatch=allow_profile_mismatch,
            unpack_to=Path(tmp) / "bundle",
        )
