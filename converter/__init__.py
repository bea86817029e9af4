"""edgekit's host side: import a model, optimise it for a device profile, gate, benchmark, sign."""

from .errors import ConversionError, GateFailed

__all__ = ["ConversionError", "GateFailed"]
