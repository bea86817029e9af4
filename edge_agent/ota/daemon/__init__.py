"""The agent daemon (`edge-agent serve`): `Agent` wires one part per job (see agent.py)."""

from .agent import Agent, install_signal_handlers
from .config import AgentConfig, AgentConfigError

__all__ = ["Agent", "AgentConfig", "AgentConfigError", "install_signal_handlers"]
