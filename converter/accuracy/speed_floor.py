"""The speed floor of the mixed-precision search (--min-speedup), decided before any layer is tried.

Keeping a layer in float only makes a model slower, so when plain int8 itself already runs below
fp32 / --min-speedup there is no speed to spend on accuracy: the search would hand back a model that
is both worse than float and not worth its int8 error. One timing is not enough to say so (a load
spike on a shared host made TFLite YOLOv8n look 1.21x where the benchmark measured 2.76x), so fp32
and plain int8 are each timed twice and the faster of the two counts:
  - int8 below the floor in both timings: stop. Nothing is written; the user is told the figures and
    the command lines that get a bundle (fp16 first, then --min-speedup 0, then --force).
  - one slow timing only (a spike): the floor stands and the walk goes on as usual.
The floor is the host's timing standing in for the device's, so by default it is enforced only when the host
has the profile's architecture. Converting for a Raspberry Pi on an x86 laptop, the laptop's int8 kernels say
little about the Pi's (measured: MobileNetV2 int8 1.20x fp32 on an AVX2 EPYC without VNNI, 1.6-2.2x on AVX-512
VNNI), so the search there is bounded by a layer count, the host figures are reported, and an explicit
--min-speedup still enforces them.
"""

from __future__ import annotations

import logging
import platform
import shlex
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from ..errors import GateFailed

log = logging.getLogger(__name__)
TIMINGS = 2  # fp32 and plain int8 are each timed this many times; the fastest counts
DEFAULT_MIN_SPEEDUP = 1.3  # when the host stands for the device: int8 must buy at least this over fp32
HOST_ARCH = {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64", "aarch64": "aarch64", "armv7l": "armv7l",
             "armv8l": "armv7l"}  # platform.machine() spellings -> device_profiles.ARCHES


def host_arch(machine: str | None = None) -> str:
    """This host's architecture in the profiles' spelling (unknown machines pass through, lower-cased)."""
    m = (machine if machine is not None else platform.machine()).lower()
    return HOST_ARCH.get(m, m)


def resolve_min_speedup(option: float | None, target_arch: str, machine: str | None = None) -> tuple[float, str | None]:
    """The floor to enforce and, when none is enforced by default, why: (--min-speedup as given) or
    (DEFAULT_MIN_SPEEDUP on a host of the target's arch) or (0: no floor, with a note, cross-architecture)."""
    if option is not None:
        return option, None
    host = host_arch(machine)
    if host == target_arch.lower():
        return DEFAULT_MIN_SPEEDUP, None
    return 0.0, (f"not enforced: this {host} host's int8 timings do not stand for the {target_arch} target's, so the "
                 f"search is bounded by a layer count (host speed-ups are still reported; --min-speedup "
                 f"{DEFAULT_MIN_SPEEDUP:g} enforces them, measure on the device with `edge-agent bench`)")


@dataclass
class SpeedFloor:
    """fp32 and plain int8 latency on this host (fastest of TIMINGS each) against fp32 / --min-speedup."""

    min_speedup: float
    fp32_timings: list[float]
    int8_timings: list[float]
    fp32_ms: float = field(init=False)
    int8_ms: float = field(init=False)
    floor_ms: float = field(init=False)

    def __post_init__(self) -> None:
        self.fp32_ms, self.int8_ms = min(self.fp32_timings), min(self.int8_timings)
        self.floor_ms = self.fp32_ms / self.min_speedup

    @property
    def below(self) -> bool:
        """Plain int8 slower than the floor in every timing: speed is not what int8 buys here."""
        return all(t > self.floor_ms for t in self.int8_timings)

    @property
    def spike(self) -> bool:
        """Some but not all int8 timings were below the floor: load noise, the floor stands."""
        return not self.below and any(t > self.floor_ms for t in self.int8_timings)

    @property
    def speedup(self) -> float:
        return self.fp32_ms / self.int8_ms

    def to_dict(self) -> dict[str, Any]:
        return {"min_speedup": self.min_speedup, "fp32_ms": [round(t, 4) for t in self.fp32_timings],
                "int8_ms": [round(t, 4) for t in self.int8_timings], "floor_ms": round(self.floor_ms, 4),
                "int8_speedup_vs_fp32": round(self.speedup, 3), "below": self.below, "spike": self.spike}


def measure_floor(latency: Callable[[Any], float], fp32_model: Any, int8_model: Any, min_speedup: float) -> SpeedFloor:
    """Time fp32 and plain int8 TIMINGS times each, interleaved (a spike then hits one of each, not both int8 runs)."""
    fp32, int8 = [], []
    for _ in range(TIMINGS):
        fp32.append(latency(fp32_model))
        int8.append(latency(int8_model))
    floor = SpeedFloor(min_speedup, fp32, int8)
    if floor.spike:
        log.info("plain int8 timed below --min-speedup %s once (%s ms vs floor %.3f ms): load spike, the floor stands",
                 min_speedup, ", ".join(f"{t:.3f}" for t in int8), floor.floor_ms)
    return floor


def below_floor_message(floor: SpeedFloor, int8_score: dict[str, Any], reasons: Sequence[str],
                        command: Sequence[str], precision: str = "int8-static") -> str:
    """One line: why nothing was written, the best candidate's figures, then the commands that get a bundle
    (fp16 first: float's answers; then the search without a floor; then --force: plain int8 as is)."""
    base = ["edge-convert", *command] if command else ["edge-convert", "convert", "..."]
    timings = ", ".join(f"{t:.2f}" for t in floor.int8_timings)
    return (f"{precision} misses the accuracy budget ({'; '.join(reasons)}) and runs at {floor.speedup:.2f}x fp32 on "
            f"this host, below --min-speedup {floor.min_speedup:g} in both timings (int8 {timings} ms, fp32 "
            f"{floor.fp32_ms:.2f} ms): a layer kept in float would only be slower, so no layer search and nothing "
            f"written. Best candidate: {precision} without a layer search, agreement {int8_score['agreement']:.4f}, "
            f"{floor.speedup:.2f}x fp32. To keep float's answers: {shlex.join([*base, '--precision', 'fp16'])} ; "
            f"to search layers anyway, without the speed floor: {shlex.join([*base, '--min-speedup', '0'])} ; "
            f"to write {precision} as is: {shlex.join([*base, '--force'])}")


def enforce_floor(entry: dict[str, Any], measurements: dict[str, Any], command: Sequence[str], force: bool,
                  precision: str) -> None:
    """After a search that stopped below the floor (`entry` = its pass entry): record it, then refuse (GateFailed,
    exit 30, nothing written) or, with --force, keep plain int8 with a warning."""
    floor = entry.get("speed_floor") or {}
    if not floor.get("below"):
        return
    measurements["mixed_precision"] = {"float_layers": [], "passed": False, "speed_floor": floor,
                                       "not_attempted": "plain int8 runs below --min-speedup in both timings"}
    sf = SpeedFloor(floor["min_speedup"], floor["fp32_ms"], floor["int8_ms"])
    message = below_floor_message(sf, entry["int8"], floor["int8_misses"], command, precision)
    if not force:
        raise GateFailed(message)
    log.warning("%s; writing plain %s anyway because of --force", message.split(". Best candidate")[0], precision)
