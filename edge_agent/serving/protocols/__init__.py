"""Inference protocols the endpoint speaks, one module each behind ProtocolAdapter (base.py)."""

from __future__ import annotations

from .base import ProtocolAdapter, Request, Response
from .kserve_v2 import KServeV2
from .tf_serving import TFServing

ADAPTERS: tuple[type[ProtocolAdapter], ...] = (KServeV2, TFServing)

__all__ = ["ADAPTERS", "KServeV2", "ProtocolAdapter", "Request", "Response", "TFServing"]
