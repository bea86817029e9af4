"""Inference runtimes behind one small interface; each backend is imported only when used."""

from __future__ import annotations

import importlib
from pathlib import Path

from ..bundle import Manifest
from .base import ModelSession, Runtime, RuntimeInfo, RuntimeLoadError

# runtime name (device_profiles.RUNTIMES: as in manifests and profiles) -> "module:class"; imported
# lazily so a device needs only the runtime its bundles use; tests/test_profiles.py checks that
# every runtime name has a backend here.
_BACKENDS = {
    "onnxruntime": "edge_agent.runtimes.onnxruntime_runtime:OnnxRuntime",
    "litert": "edge_agent.runtimes.litert_runtime:LiteRTRuntime",
}


def register_runtime(name: str, target: str) -> None:
    """Add a backend under `name` ("package.module:Class", imported when first used): how a plug-in or
    a test adds a runtime without editing this file (docs/extending.md)."""
    if name in _BACKENDS and _BACKENDS[name] != target:
        raise ValueError(f"runtime {name!r} is already registered as {_BACKENDS[name]}")
    _BACKENDS[name] = target


def get_runtime(name: str) -> Runtime:
    """The backend registered under `name`; RuntimeLoadError when unknown or not installed."""
    target = _BACKENDS.get(name)
    if target is None:
        raise RuntimeLoadError(f"unknown runtime {name!r}; known: {', '.join(sorted(_BACKENDS))}")
    module_name, cls_name = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeLoadError(f"runtime {name!r} is not installed here ({exc}): pip install 'edgekit[agent]'") from exc
    return getattr(module, cls_name)()


def load_session(
    bundle_dir: Path, manifest: Manifest, threads: int | None = None, providers: list[str] | None = None
) -> ModelSession:
    """Load an unpacked bundle with the runtime its manifest names."""
    return get_runtime(manifest.runtime).load(Path(bundle_dir), manifest, threads=threads, providers=providers)


__all__ = ["ModelSession", "Runtime", "RuntimeInfo", "RuntimeLoadError", "get_runtime", "load_session", "register_runtime"]
