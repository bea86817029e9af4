"""Board facts -> the built-in profile that fits, and why (or why none does).

Rules as data, most specific first: the device-tree model string, then the L4T release (Jetson),
then the CPU core (a Pi 4 under an image without a device tree still shows Cortex-A72), then the
architecture. A match is refused when the board has less memory than the profile's budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from .facts import BoardFacts

# (field of BoardFacts, substring to look for (lower case), profile)
RULES: tuple[tuple[str, str, str], ...] = (
    ("model", "raspberry pi 5", "raspberry-pi-5"),
    ("model", "raspberry pi 4", "raspberry-pi-4"),
    ("model", "raspberry pi compute module 4", "raspberry-pi-4"),
    ("model", "raspberry pi zero 2", "raspberry-pi-zero-2w"),
    ("model", "orin nano", "jetson-orin-nano"),
    ("model", "jetson nano", "jetson-nano"),
    ("l4t", "r36", "jetson-orin-nano"),
    ("l4t", "r35", "jetson-orin-nano"),
    ("l4t", "r32", "jetson-nano"),
    ("cpu", "cortex-a76", "raspberry-pi-5"),
    ("cpu", "cortex-a72", "raspberry-pi-4"),
    ("cpu", "cortex-a78ae", "jetson-orin-nano"),
    ("cpu", "cortex-a57", "jetson-nano"),
    ("cpu", "cortex-a53", "raspberry-pi-zero-2w"),
    ("arch", "x86_64", "x86-64-cpu"),
)


@dataclass(frozen=True)
class ProfileMatch:
    profile: str | None
    reason: str

    def line(self, facts: BoardFacts) -> str:
        """`aarch64 cortex-a72 -> raspberry-pi-4 (detected)`: what doctor and probe print first."""
        target = self.profile or "no profile fits"
        return f"{facts.arch or '?'} {facts.cpu or '?'} -> {target} ({'detected' if self.profile else self.reason})"


def match_profile(facts: BoardFacts) -> ProfileMatch:
    """The built-in profile for these facts, with the rule that chose it; profile None when none fits."""
    from . import load_profile

    for attr, needle, name in RULES:
        value = str(getattr(facts, attr) or "").lower()
        if needle in value:
            profile = load_profile(name)
            why = f"{attr} {getattr(facts, attr)!r} matches {needle!r}"
            budget = profile.limits.memory_budget_mb
            if facts.memory_mb and facts.memory_mb < budget:
                return ProfileMatch(None, f"{why}, but {facts.memory_mb} MB RAM is below {name}'s budget of {budget:g} MB "
                                          f"(pass --profile {name} to use it anyway, or a profile file with a smaller budget)")
            return ProfileMatch(name, why)
    return ProfileMatch(None, f"no built-in profile for arch {facts.arch or '?'} cpu {facts.cpu or '?'} "
                              f"model {facts.model or '?'}: pass --profile NAME or a profile file")
