"""The device's edgekit install as seen over SSH: run its `edge-agent`, read and write its service config.

`edge-agent`'s own exit codes come back unchanged (a bundle for another profile is 17 here as on
the device), with its one-line message prefixed by the device's name.
"""

from __future__ import annotations

import asyncio
import json
import shlex
from dataclasses import asdict, dataclass
from typing import Any

from edge_agent.errors import AGENT, DEVICE_CLI, EXIT_CODES, EdgekitError

from .layout import SERVICE, Layout
from .ssh import Device, RemoteCommandFailed, sudo_problem

OUR_CODES = frozenset(e.code for e in EXIT_CODES if DEVICE_CLI in e.clis or AGENT in e.clis)  # the device agent's own


class NotSetUp(EdgekitError):
    code_name = "not-set-up"


@dataclass
class ServiceConfig:
    """What setup chose; stored on the device as service.json so flash and status need no flags."""

    broker: str
    device_id: str
    profile: str
    user: str
    systemd: bool
    version: str = ""


class RemoteAgent:
    def __init__(self, device: Device, layout: Layout, uid: int) -> None:
        self.device, self.layout, self.uid = device, layout, uid

    @property
    def name(self) -> str:
        return self.device.target.name

    def as_root(self, cmd: str) -> str:
        return cmd if self.uid == 0 else f"sudo -n sh -c {shlex.quote(cmd)}"

    def as_user(self, user: str, cmd: str) -> str:
        """`cmd` run as the service user (so the agent home keeps one owner)."""
        if self.uid == 0 and user != "root":
            return f"runuser -u {shlex.quote(user)} -- sh -c {shlex.quote(cmd)}"
        if self.uid != 0 and user not in ("", self.device.target.user):
            return f"sudo -n -u {shlex.quote(user)} sh -c {shlex.quote(cmd)}"
        return cmd

    def exec_as_user(self, user: str, cmd: str) -> str:
        """`cmd` run as `user` in place of this shell (exec), so the pid the shell had is the agent's own and
        stopping it stops the agent (runuser forks and does not pass SIGTERM on; setpriv execs)."""
        q = shlex.quote
        if self.uid == 0 and user != "root":
            return f"exec setpriv --reuid={q(user)} --regid=$(id -g {q(user)}) --init-groups -- sh -c {q(cmd)}"
        wrapped = self.as_user(user, cmd)  # sudo passes signals on to the command
        return "exec " + (wrapped if wrapped != cmd else f"sh -c {q(cmd)}")  # already that user: a shell, exec'd

    async def config(self) -> ServiceConfig:
        r = await self.device.run(f"cat {shlex.quote(self.layout.service_json)} 2>/dev/null")
        if r.exit_status != 0 or not r.stdout.strip():
            raise NotSetUp(f"{self.name}: edgekit is not set up under {self.layout.root} (run `edge-device setup` first, "
                           f"or pass the --remote-dir setup used)")
        try:  # a newer edge-device's extra fields are ignored; a damaged file is named, not a Python message
            data = json.loads(r.stdout)
            return ServiceConfig(**{k: v for k, v in data.items() if k in ServiceConfig.__dataclass_fields__})
        except (ValueError, TypeError, AttributeError) as exc:
            raise NotSetUp(f"{self.name}: {self.layout.service_json} is damaged ({exc.__class__.__name__}: {exc}): run "
                           f"`edge-device setup` again to rewrite it") from None

    async def write_config(self, cfg: ServiceConfig) -> None:
        await self.device.run(self.as_root(f"cat > {shlex.quote(self.layout.service_json)}"), check=True,
                              stdin=json.dumps(asdict(cfg), indent=2) + "\n")

    async def agent(self, user: str, *args: str, json_out: bool = True, timeout: float | None = None) -> Any:
        """Run `edge-agent ARGS [--json]` on the device as `user`; its JSON result, or its own error and code."""
        cmd = self.layout.agent_cmd(*args, *(("--json",) if json_out else ()))
        r = await self.device.run(self.as_user(user, f"EDGE_AGENT_HOME={shlex.quote(self.layout.home)} {cmd}"),
                                  timeout=timeout)
        if r.exit_status != 0:
            if hint := sudo_problem(self.device.target, r.stderr):
                raise RemoteCommandFailed(hint, 1, r.stderr)
            line = next((ln for ln in reversed(r.stderr.strip().splitlines()) if "error:" in ln), "")
            message = line.split("error:", 1)[1].strip() if line else (r.stderr.strip() or f"exit {r.exit_status}")
            code = r.exit_status if r.exit_status in OUR_CODES else 1  # a shell's 127 or ssh's 255 is not one of ours
            raise RemoteCommandFailed(f"{self.name}: edge-agent {args[0]}: {message.splitlines()[-1]}", code, r.stderr)
        if not json_out:
            return r.stdout
        return json.loads(r.stdout)

    # --- the service -------------------------------------------------------------------------

    async def has_systemd(self) -> bool:
        return (await self.device.run("test -d /run/systemd/system")).exit_status == 0

    async def start(self, cfg: ServiceConfig, exec_line: str) -> None:
        """Enable and (re)start the unit; without a running systemd (containers), start the unit's
        ExecStart detached as the service user, its log in agent.log and its pid in agent.pid."""
        if cfg.systemd:
            await self.device.run(self.as_root(f"systemctl daemon-reload && systemctl enable {SERVICE} >/dev/null 2>&1 "
                                               f"&& systemctl restart {SERVICE}"), check=True)
            return
        await self.stop_detached()
        lay = self.layout
        inner = f"EDGE_AGENT_HOME={shlex.quote(lay.home)} PYTHONUNBUFFERED=1 exec {exec_line}"
        cmd = (f"setsid sh -c {shlex.quote(self.exec_as_user(cfg.user, inner))} >>{shlex.quote(lay.log_file)} 2>&1 </dev/null & "
               f"echo $! > {shlex.quote(lay.pid_file)}")
        await self.device.run(self.as_root(cmd), check=True)

    async def stop_detached(self) -> None:
        pid = shlex.quote(self.layout.pid_file)
        await self.device.run(self.as_root(f"if [ -f {pid} ]; then kill $(cat {pid}) 2>/dev/null; "
                                           f"for i in $(seq 50); do kill -0 $(cat {pid}) 2>/dev/null || break; sleep 0.1; done; "
                                           f"rm -f {pid}; fi"))

    async def running(self, cfg: ServiceConfig, settle_s: float = 0.0) -> bool:
        """Is the service up (after `settle_s`, so a crash at start-up is seen)?"""
        await asyncio.sleep(settle_s)
        if cfg.systemd:
            return (await self.device.run(f"systemctl is-active --quiet {SERVICE}")).exit_status == 0
        pid = shlex.quote(self.layout.pid_file)
        return (await self.device.run(f"test -f {pid} && kill -0 $(cat {pid})")).exit_status == 0
