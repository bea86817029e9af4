"""Latency statistics and (later) exporters/reporters."""
