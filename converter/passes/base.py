"""The Pass interface: a name, whether it applies, and a run() that updates the context."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from .context import ConversionContext


class Pass(ABC):
    """One step of a conversion: a name, a run() that updates the context, a report entry."""

    name: str = "pass"

    def applies(self, ctx: ConversionContext) -> bool:
        """Whether this pass has anything to do for this conversion."""
        return True

    @abstractmethod
    def run(self, ctx: ConversionContext) -> dict[str, Any]:
        """Do the work; return the report entry (what was done, the numbers)."""
