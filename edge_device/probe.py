"""`edge-device probe`: what is this board, which profile fits, can it run the agent?

Runs device_profiles.facts' shell script over SSH (no Python needed on the device) and parses it
with the same code `edge-agent doctor` uses on the device itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from device_profiles.facts import MIN_PYTHON, BoardFacts, parse_facts, probe_script, split_sections
from device_profiles.matching import ProfileMatch, match_profile
from edge_agent.errors import EdgekitError

from .layout import Layout
from .ssh import Device


class NoPython(EdgekitError):
    code_name = "no-python"


class NoProfileFits(EdgekitError):
    code_name = "no-profile-fits"


@dataclass
class Probe:
    facts: BoardFacts
    match: ProfileMatch
    uid: int
    agent_version: str  # "" when edge-agent is not installed under the layout

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.match.profile, "reason": self.match.reason, "root": self.uid == 0,
                "agent_version": self.agent_version or None, "python_ok": self.facts.python_ok,
                "facts": self.facts.to_dict()}

    def text(self, name: str) -> str:
        f = self.facts
        return "\n".join([
            f"{name}: {self.match.line(f)}",
            f"  why:     {self.match.reason}",
            f"  board:   {f.model or '-'}" + (f"  L4T {f.l4t} (JetPack {f.jetpack})" if f.l4t else "") + f"  ({f.os or '-'})",
            f"  cpu:     {f.cores} cores, {f.memory_mb} MB RAM, {'?' if f.disk_free_mb is None else f.disk_free_mb} MB free, glibc {f.glibc or '?'}",
            f"  python:  {f.python or '-'} {f.python_version or '(none found)'}"
            + ("" if f.python_ok else f"  (the agent needs >= {'.'.join(map(str, MIN_PYTHON))})"),
            f"  cameras: {', '.join(f.cameras) or 'none'}   cuda: {'yes' if f.cuda else 'no'}",
            f"  agent:   {self.agent_version or 'not installed'}",
        ])

    def require_python(self, name: str, asked: str | None = None) -> str:
        """The device's Python; `asked` (--python) is named when it is not there (it said "none found: ... or pass
        --python PATH" to an operator who had passed one)."""
        if not self.facts.python_ok:
            if asked and not self.facts.python:
                raise NoPython(f"{name}: --python {asked}: not found or not runnable on the device, so no Python >= "
                               f"{'.'.join(map(str, MIN_PYTHON))} to use: check the path, or leave out --python to use "
                               f"the newest python3.X found")
            found = f"{self.facts.python} is {self.facts.python_version}" if self.facts.python else "none found"
            raise NoPython(f"{name}: no Python >= {'.'.join(map(str, MIN_PYTHON))} on the device ({found}): install "
                           f"python3 (apt-get install python3) or pass --python PATH")
        return self.facts.python

    def require_profile(self, name: str, explicit: str | None) -> str:
        if explicit:
            from device_profiles import load_profile

            return load_profile(explicit).name
        if self.match.profile is None:
            raise NoProfileFits(f"{name}: {self.match.reason}")
        return self.match.profile


BOARD_ROOT_ENV = "EDGEKIT_TEST_BOARD_ROOT"  # test hook: read the board's files under this folder of the device


async def probe(device: Device, layout: Layout, python: str | None = None) -> Probe:
    r = await device.run(probe_script(python, layout.root, os.environ.get(BOARD_ROOT_ENV, "")), check=True)
    facts = parse_facts(split_sections(r.stdout))
    uid = await device.run("id -u")
    version = await device.run(f"{layout.agent} --version 2>/dev/null")
    return Probe(facts, match_profile(facts), int(uid.stdout.strip() or -1),
                 version.stdout.strip().split()[-1] if version.exit_status == 0 and version.stdout.strip() else "")
