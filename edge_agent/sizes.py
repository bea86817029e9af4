"""Byte counts as people read them, one writer for every size line (edge-convert's summary, edge-agent bench)."""

from __future__ import annotations


def human_size(n: float) -> str:
    """1234 -> '1.2 kB', 379 -> '379 bytes', 4_500_000 -> '4.50 MB': a tiny model's size read '0.000 MB'."""
    if n < 1000:
        return f"{int(n)} bytes"
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    if n < 1e9:
        return f"{n / 1e6:.2f} MB"
    return f"{n / 1e9:.2f} GB"
