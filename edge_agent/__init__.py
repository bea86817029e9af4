"""edgekit's device side: verify and install bundles, run them, report, receive OTA updates."""

__version__ = "0.1.0"
