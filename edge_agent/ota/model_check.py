"""The install-time model health check of a slot: the model loads, its self-test passes, latency is in budget.

Not the liveness of a running pipeline (`/health`): that is edge_agent.telemetry.liveness.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..bundle import Manifest
from ..runtimes import ModelSession, load_session
from ..runtimes.int8_host import host_saturates
from ..errors import AgentError

log = logging.getLogger(__name__)

_NP_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
              "int32": np.int32, "int64": np.int64, "bool": np.bool_}


class HealthCheckFailed(AgentError, RuntimeError):
    """The new model did not pass its health check (one line: which check and by how much)."""

    code_name = "health-check"
    kind = "health-check"


@dataclass
class SelfTestData:
    """The recorded inputs (per model input, first axis = sample) and outputs of a bundle."""

    inputs: dict[str, np.ndarray]
    outputs: list[np.ndarray]

    def __len__(self) -> int:
        return len(next(iter(self.inputs.values()))) if self.inputs else 0

    def feeds(self, i: int, manifest: Manifest) -> dict[str, np.ndarray]:
        """Batch-1 feeds for sample i, cast to the dtypes the manifest declares."""
        dtypes = {t.name: _NP_DTYPES.get(t.dtype, np.float32) for t in manifest.inputs}
        return {k: np.ascontiguousarray(v[i : i + 1]).astype(dtypes.get(k, v.dtype), copy=False)
                for k, v in self.inputs.items()}


def load_selftest(bundle_dir: Path, manifest: Manifest) -> SelfTestData | None:
    """The bundle's selftest.npz (arrays `input.<name>` and `output.<i>`), or None if it has none."""
    if manifest.selftest is None:
        return None
    with np.load(Path(bundle_dir) / manifest.selftest.file, allow_pickle=False) as npz:
        inputs = {k[len("input."):]: npz[k] for k in npz.files if k.startswith("input.")}
        outputs = [npz[f"output.{i}"] for i in range(len(manifest.outputs)) if f"output.{i}" in npz.files]
    if not inputs or len(outputs) != len(manifest.outputs):
        raise HealthCheckFailed(f"{manifest.selftest.file} does not hold inputs and one array per model output")
    return SelfTestData(inputs, outputs)


@dataclass
class HealthReport:
    samples: int = 0
    max_abs_error: float = 0.0
    latency_ms: float = 0.0
    budget_ms: float | None = None
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"samples": self.samples, "max_abs_error": self.max_abs_error, "latency_ms": self.latency_ms,
                "budget_ms": self.budget_ms, **self.details}


def check_session(session: ModelSession, bundle_dir: Path, manifest: Manifest,
                  latency_budget_ms: float | None, latency_runs: int = 5,
                  reference: ModelSession | None = None) -> HealthReport:
    """Run the self-test on a loaded session (its answers on `reference` when given) and time the session;
    HealthCheckFailed on any miss."""
    report = HealthReport(budget_ms=latency_budget_ms)
    data = load_selftest(bundle_dir, manifest)
    if data is None:
        raise HealthCheckFailed("bundle has no selftest data: cannot prove the model works on this device")
    st = manifest.selftest
    assert st is not None
    for i in range(len(data)):
        try:
            got = (reference or session).run(data.feeds(i, manifest))
        except Exception as exc:  # noqa: BLE001 - any runtime failure is a failed health check
            raise HealthCheckFailed(f"self-test inference failed: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
        for j, (g, want) in enumerate(zip(got, data.outputs)):
            g = np.asarray(g, dtype=np.float32)
            w = np.asarray(want[i : i + 1], dtype=np.float32)
            if g.shape != w.shape:
                raise HealthCheckFailed(f"self-test output {j} has shape {list(g.shape)}, recorded {list(w.shape)}")
            err = float(np.max(np.abs(g - w))) if g.size else 0.0
            report.max_abs_error = max(report.max_abs_error, err)
            if not np.allclose(g, w, atol=st.atol, rtol=st.rtol):
                raise HealthCheckFailed(
                    f"self-test sample {i} output {j} differs from the recorded output by {err:.4g} "
                    f"(allowed atol {st.atol} rtol {st.rtol})"
                )
    report.samples = len(data)
    feeds = data.feeds(0, manifest)
    times = []
    for _ in range(max(1, latency_runs)):
        t0 = time.perf_counter()
        session.run(feeds)
        times.append((time.perf_counter() - t0) * 1000.0)
    report.latency_ms = round(float(np.median(times)), 4)
    if latency_budget_ms is not None and report.latency_ms > latency_budget_ms:
        raise HealthCheckFailed(
            f"latency {report.latency_ms:.3f} ms is over the profile's budget of {latency_budget_ms} ms"
        )
    return report


def exact_int8_self_test(manifest: Manifest) -> bool:
    """An int8 ONNX bundle on a CPU whose fused int8 kernels saturate (x86 without VNNI): its self-test outputs were
    recorded in the target's exact arithmetic (converter/passes/selftest.py), so they are checked in it too."""
    return manifest.runtime == "onnxruntime" and manifest.precision.startswith("int") and host_saturates()


def exact_reference(bundle_dir: Path, manifest: Manifest, threads: int | None) -> ModelSession | None:
    """The session whose answers the self-test checks, when it is not the serving one (exact_int8_self_test)."""
    if not exact_int8_self_test(manifest):
        return None
    from ..runtimes.onnxruntime_runtime import OnnxRuntime

    log.warning("this CPU's int8 kernels saturate (x86 without VNNI): the self-test checks %s in exact int8 "
                "arithmetic, as a Pi computes it; answers served here may differ from the target's",
                manifest.model_file)
    return OnnxRuntime().load(Path(bundle_dir), manifest, threads=threads, exact_int8=True)


def load_checked(bundle_dir: Path, manifest: Manifest, latency_budget_ms: float | None,
                 threads: int | None = None) -> tuple[ModelSession, HealthReport]:
    """Load a slot's model and health-check it; the session is closed if the check fails."""
    try:
        session = load_session(bundle_dir, manifest, threads=threads)
    except Exception as exc:  # noqa: BLE001
        raise HealthCheckFailed(f"model does not load: {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    reference = None
    try:
        reference = exact_reference(bundle_dir, manifest, threads)
        report = check_session(session, bundle_dir, manifest, latency_budget_ms, reference=reference)
    except BaseException:
        session.close()
        raise
    finally:
        if reference is not None:
            reference.close()
    report.details["selftest_arithmetic"] = "exact-int8" if reference else "served"  # exact: exact_int8_self_test
    log.info("health check passed: %d samples, max error %.4g, latency %.3f ms", report.samples,
             report.max_abs_error, report.latency_ms)
    return session, report
