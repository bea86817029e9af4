"""Local inference API for apps on the device: KServe v2 and TF Serving REST over the served model.

    holder.py       the served model, swapped atomically on an OTA switch (in-flight requests finish on the old one)
    batcher.py      dynamic batcher: max delay, bounded queue (503 when full), worker threads
    service.py      checks + batcher + observers (drift, shadow runs: pipeline.observe) + statistics
    tensors.py      client tensors <-> runtime feeds, KServe datatypes and binary layout
    images.py       encoded images through the bundle's own pre/postprocessing
    protocols/      one adapter per protocol (kserve_v2, tf_serving) behind ProtocolAdapter
    server.py       stdlib HTTP server: limits, bearer token, /metrics
    cli.py          `edge-agent serve-model BUNDLE --http PORT`, and `--http` for `edge-agent serve`
"""

from __future__ import annotations

from .batcher import BatchPolicy
from .holder import ModelHolder, ServedModel
from .server import HttpOptions, ServingServer
from .service import InferenceService


def start_serving(holder: ModelHolder, policy: BatchPolicy = BatchPolicy(),
                  options: HttpOptions = HttpOptions()) -> ServingServer:
    """An InferenceService over `holder` behind a running HTTP server (close() the server, then its service)."""
    service = InferenceService(holder, policy)
    try:
        return ServingServer(service, options)
    except Exception:
        service.close()
        raise


def stop_serving(server: ServingServer) -> None:
    server.close()
    server.service.close()


__all__ = ["BatchPolicy", "HttpOptions", "InferenceService", "ModelHolder", "ServedModel",
           "ServingServer", "start_serving", "stop_serving"]
