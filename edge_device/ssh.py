"""One SSH connection to a device (asyncssh): run commands, push files atomically and resumably.

Host keys are checked against a known_hosts file and a changed key is never accepted; an unknown
host is refused too unless the caller asks for `accept_new` (like OpenSSH's
StrictHostKeyChecking=accept-new: only a host with NO recorded key is learned and written down).
Each failure becomes a typed error with its own exit code (edge_agent/errors.py, 8 and 80-84).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import socket
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import AsyncIterator, Callable

import asyncssh

from edge_agent.bundle import sha256_file
from edge_agent.bundle.errors import InsufficientSpace
from edge_agent.errors import EdgekitError

log = logging.getLogger(__name__)

STOP_COPY_ENV = "EDGEKIT_TEST_STOP_COPY_AFTER"  # test hook: the link "drops" after N bytes of a push
CHUNK = 256 * 1024
OUTPUT_MARK = "--edgekit-output--"  # printed before each command: the device's shell start-up text stays above it


class ConnectionFailed(EdgekitError):
    code_name = "connection-failed"


class HostKeyRefused(EdgekitError):
    code_name = "host-key"


class LoginRefused(EdgekitError):
    code_name = "ssh-auth"


class BadTarget(EdgekitError):
    code_name = "usage"


class BadIdentity(EdgekitError):
    code_name = "usage"


class BadKnownHosts(EdgekitError):
    code_name = "usage"


class CopyInterrupted(EdgekitError):
    code_name = "copy-interrupted"


class RemoteCommandFailed(EdgekitError):
    """A command on the device failed; carries the exit code the device's edge-agent chose."""

    def __init__(self, message: str, exit_code: int = 1, detail: str | None = None) -> None:
        super().__init__(message, detail)
        self.exit_code = exit_code


@dataclass(frozen=True)
class Target:
    """Where a device is and how to log in; `name` labels it in tables (the inventory's name or the host)."""

    host: str
    user: str | None = None
    port: int = 22
    name: str = ""
    identity: Path | None = None
    known_hosts: Path | None = None
    accept_new: bool = False
    profile: str | None = None
    groups: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def parse(cls, spec: str, **kw: object) -> "Target":
        """`[user@]host[:port]`, `[user@][v6addr]:port` or a bare IPv6 address, plus options; a bad port or
        an empty host is a usage error (exit 2) naming the target, not a Python message."""
        user, _, hostport = spec.rpartition("@")
        host, p = hostport, ""
        if hostport.startswith("["):
            host, sep, rest = hostport[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise BadTarget(f"device {spec!r}: expected [ADDRESS]:PORT, e.g. pi@[fe80::1]:22")
            p = rest[1:]
        elif hostport.count(":") == 1:
            host, p = hostport.split(":")
        if not host or (p and not p.isdigit()) or not 0 < int(p or 22) < 65536:
            raise BadTarget(f"device {spec!r}: expected [USER@]HOST[:PORT] with a port 1-65535 "
                            f"(IPv6: USER@[ADDRESS]:PORT)")
        t = cls(host=host, user=user or None, port=int(p or 22), **kw)  # type: ignore[arg-type]
        return t if t.name else replace(t, name=spec)

    @property
    def where(self) -> str:
        """`user@host:port` as the operator would type it (IPv6 bracketed) for messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user + '@' if self.user else ''}{host}:{self.port}"

    @property
    def known_hosts_file(self) -> Path:
        return Path(self.known_hosts or Path.home() / ".ssh" / "known_hosts").expanduser()


def sudo_problem(target: Target, stderr: str) -> str | None:
    """What to do when a non-root login has no usable sudo, else None: the shell's "sudo: not found" or
    sudo's "a password is required" said neither that root was needed nor how to give it."""
    who = target.user or "this user"
    text = stderr.lower()
    if "sudo: not found" in text or "sudo: command not found" in text:
        return f"{target.name}: {who} is not root and sudo is not installed: log in as root, or install sudo " \
               f"and give {who} passwordless sudo"
    if "password is required" in text or "terminal is required" in text or "not in the sudoers" in text \
            or "may not run sudo" in text or "not allowed to execute" in text:
        return f"{target.name}: {who} is not root and cannot sudo without a password (edge-device never types one): " \
               f"give {who} passwordless sudo (NOPASSWD in /etc/sudoers.d), or log in as root"
    return None


@dataclass
class Result:
    exit_status: int
    stdout: str
    stderr: str


def _known_hosts_line(target: Target, key: asyncssh.SSHKey) -> str:
    host = target.host if target.port == 22 else f"[{target.host}]:{target.port}"
    kind, blob = key.export_public_key("openssh").decode().split()[:2]
    return f"{host} {kind} {blob}\n"


def _recorded(target: Target) -> bool:
    """Does known_hosts hold any key for this host and port?"""
    path = target.known_hosts_file
    if not path.is_file():
        return False
    keys = asyncssh.import_known_hosts(path.read_text()).match(target.host, "", target.port)[0]
    return bool(keys)


class Device:
    """An open SSH connection to one device."""

    def __init__(self, conn: asyncssh.SSHClientConnection, target: Target) -> None:
        self.conn, self.target = conn, target

    async def run(self, command: str, check: bool = False, stdin: str | None = None, timeout: float | None = None) -> Result:
        # a login shell's rc file that prints ("Welcome to the board") came before our output: `id -u` read as
        # "invalid literal for int()", JSON and checksums unreadable. Only what follows the mark is the command's.
        r = await self.conn.run(f"printf '%s\\n' {OUTPUT_MARK}; {command}", check=False, input=stdin, timeout=timeout)
        noise, mark, out = str(r.stdout or "").partition(OUTPUT_MARK + "\n")
        res = Result(int(r.exit_status if r.exit_status is not None else 255), out if mark else noise, str(r.stderr or ""))
        if check and res.exit_status != 0:
            if hint := sudo_problem(self.target, res.stderr):
                raise RemoteCommandFailed(hint, 1, res.stderr)
            last = (res.stderr.strip() or res.stdout.strip() or f"exit {res.exit_status}").splitlines()[-1]
            raise RemoteCommandFailed(f"{self.target.name}: `{command.split()[0]}` failed: {last}", 1, res.stderr)
        return res

    async def sha256(self, remote: str) -> str:
        r = await self.run(f"sha256sum {shlex.quote(remote)} 2>/dev/null")
        return r.stdout.split()[0] if r.exit_status == 0 and r.stdout else ""

    async def free_kb(self, folder: str) -> int | None:
        """Free KiB under `folder` (df -P), None when df says nothing readable; 0 is a full disk, not an unknown."""
        fields = (await self.run(f"df -Pk {shlex.quote(folder)} | tail -n 1")).stdout.split()
        return int(fields[3]) if len(fields) > 3 and fields[3].isdigit() else None

    async def _no_room(self, sftp: asyncssh.SFTPClient, part: str, done: int, size: int) -> InsufficientSpace | None:
        """SFTP reports a full disk as a bare "Failure": when the folder has no room for the rest, that is the disk
        (18), not a dropped link (84, "run again to resume", which only fails again). The partial copy is removed:
        left there it keeps the device's disk full for its running agent and logs."""
        free = await self.free_kb(os.path.dirname(part))
        if free is None or free * 1024 >= size - done:
            return None
        with contextlib.suppress(OSError, asyncssh.Error):
            await sftp.remove(part)
        return InsufficientSpace(f"{self.target.name}: no space left under {os.path.dirname(part)} after {done} of "
                                 f"{size} bytes ({free // 1024} MB free): free some space on the device, then run again")

    async def push(self, local: Path, remote: str, progress: Callable[[int, int], None] | None = None) -> int:
        """Copy `local` to `remote` atomically: into `remote.part` (resumed from its size if it is a
        prefix of ours), checked by SHA-256, then renamed. Returns the bytes resumed from."""
        size, digest = sha256_file(local)
        part = remote + ".part"
        stop_after = int(os.environ.get(STOP_COPY_ENV, "0") or 0)
        await self.run(f"mkdir -p {shlex.quote(os.path.dirname(remote))}", check=True)
        async with self.conn.start_sftp_client() as sftp:
            try:
                have = (await sftp.stat(part)).size or 0
            except asyncssh.SFTPNoSuchFile:
                have = 0
            if have > size:
                have = 0
            resumed, sent = have, 0
            try:
                async with sftp.open(part, "ab" if have else "wb") as dst:
                    with open(local, "rb") as src:
                        src.seek(have)
                        while chunk := src.read(CHUNK):
                            if stop_after and sent + len(chunk) > stop_after:
                                await dst.write(chunk[: stop_after - sent])
                                raise ConnectionResetError("test hook: link dropped")
                            await dst.write(chunk)
                            sent += len(chunk)
                            if progress:
                                progress(have + sent, size)
            except (OSError, asyncssh.Error) as exc:
                if isinstance(exc, asyncssh.SFTPFailure) and (full := await self._no_room(sftp, part, have + sent, size)):
                    raise full from exc
                raise CopyInterrupted(
                    f"{self.target.name}: copy interrupted after {have + sent} of {size} bytes ({exc}); nothing was "
                    f"installed, run the same command again to resume") from exc
            if await self.sha256(part) != digest:
                await sftp.remove(part)
                raise CopyInterrupted(f"{self.target.name}: the copy on the device does not match (resumed from a "
                                      f"different file?); it was removed, run again")
            await sftp.posix_rename(part, remote)
        return resumed


def _connect_error(target: Target, exc: BaseException) -> EdgekitError:
    where = target.where
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if _recorded(target):
            return HostKeyRefused(f"{where}: host key CHANGED (does not match {target.known_hosts_file}): refusing; "
                                  f"if the device was re-imaged, remove its old line with ssh-keygen -R")
        return HostKeyRefused(f"{where}: host key unknown (not in {target.known_hosts_file}): check its fingerprint, then "
                              f"add it (ssh-keyscan) or pass --accept-new")
    if isinstance(exc, asyncssh.PermissionDenied):
        return LoginRefused(f"{where}: login refused for user {target.user or os.environ.get('USER', '?')}: "
                            f"install your public key with ssh-copy-id, or pass --identity KEY")
    if isinstance(exc, socket.gaierror):  # was "... : is sshd running there?" for a name that does not resolve
        return ConnectionFailed(f"{where}: unknown host name {target.host!r} ({exc.strerror or exc}): check the name, "
                                f"or give the device's address")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return ConnectionFailed(f"{where}: unreachable (no answer within the timeout): check the address and network")
    return ConnectionFailed(f"{where}: cannot connect ({exc.__class__.__name__}: {exc}): is sshd running there?")


def _check_identity(target: Target) -> None:
    """A missing, public or passphrase-protected --identity is the operator's file, not the device: one line naming it
    (it was "is sshd running there?" with exit 8, or asyncssh's bare "Invalid private key" with exit 1)."""
    if not target.identity:
        return
    key = target.identity
    try:
        asyncssh.read_private_key(key)
    except OSError as exc:
        raise BadIdentity(f"{target.where}: --identity {key}: {exc.strerror or exc}") from exc
    except asyncssh.KeyImportError as exc:
        if "passphrase" in str(exc).lower():
            raise BadIdentity(f"{target.where}: --identity {key} is protected by a passphrase: add it to ssh-agent "
                              f"(ssh-add {key}) and leave out --identity") from exc
        raise BadIdentity(f"{target.where}: --identity {key} is not an SSH private key ({exc}; the public "
                          f"key is the .pub file, give the file without .pub)") from exc


@asynccontextmanager
async def connect(target: Target, timeout: float = 10.0) -> AsyncIterator[Device]:
    """An open connection to `target`, with the host key checked (see the module docstring)."""
    path = target.known_hosts_file
    known = asyncssh.import_known_hosts(path.read_text() if path.is_file() else "")
    opts = dict(port=target.port, username=target.user, connect_timeout=timeout,
                client_keys=[str(target.identity)] if target.identity else (), agent_path=None)
    if not target.identity:
        opts.pop("client_keys")
        opts.pop("agent_path")
    if target.user is None:  # asyncssh's own default (the local user, or ~/.ssh/config's); None is a TypeError
        opts.pop("username")
    _check_identity(target)
    learn = target.accept_new and not _recorded(target)
    try:
        conn = await asyncssh.connect(target.host, known_hosts=None if learn else known, **opts)  # type: ignore[arg-type]
    except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
        raise _connect_error(target, exc) from exc
    try:
        if learn:
            key = conn.get_server_host_key()
            if key is not None:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with open(path, "a") as fh:
                        fh.write(_known_hosts_line(target, key))
                except OSError as exc:  # was a bare "[Errno 17] File exists: ..." naming no host, exit 1
                    raise BadKnownHosts(f"{target.where}: cannot record its host key in --known-hosts {path} "
                                        f"({exc.strerror or exc}): give a file in a writable folder") from None
                log.warning("%s: new host key recorded in %s", target.name, path)
        yield Device(conn, target)
    except (asyncssh.DisconnectError, asyncssh.ChannelOpenError, ConnectionError) as exc:
        # the link dropped or sshd went away mid-command: was a bare "error: SSH connection closed", exit 1
        raise ConnectionFailed(f"{target.where}: connection lost ({exc.__class__.__name__}: {exc}): check the device "
                               f"(edge-device status), then run the same command again") from exc
    finally:
        conn.close()
        await conn.wait_closed()
