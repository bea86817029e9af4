"""A real OpenSSH server as the "device": Debian's sshd on a free loopback port, generated keys.

Host key and client key are made with ssh-keygen; authorized_keys and known_hosts live in the
test's folder; the server runs as the current user (root here), so the device's "system" is this
machine and its Python the system python3. `StrictModes no` because the folder is a temp dir.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"



def keygen(path: Path) -> Path:
    if path.exists():
        return path
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class SshServer:
    folder: Path
    port: int
    identity: Path        # a client private key the server accepts
    known_hosts: Path     # holds the server's real host key
    host_pub: Path
    proc: subprocess.Popen

    @property
    def target(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    def cli_args(self) -> list[str]:
        return ["--identity", str(self.identity), "--known-hosts", str(self.known_hosts)]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_sshd(folder: Path, client_pub: Path | None = None) -> SshServer:
    folder.mkdir(parents=True, exist_ok=True)
    host_key = keygen(folder / "host_ed25519")
    identity = folder / "client_ed25519"
    if not identity.exists():
        keygen(identity)
    (folder / "authorized_keys").write_text(Path(str(client_pub or identity) + ("" if client_pub else ".pub")).read_text())
    port = free_port()
    host_pub = Path(str(host_key) + ".pub")
    kind, blob = host_pub.read_text().split()[:2]
    known = folder / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {kind} {blob}\n")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"HostKey {host_key}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
        "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", f"PidFile {folder / 'sshd.pid'}",
        "Subsystem sftp internal-sftp", "LogLevel ERROR", "MaxStartups 100", "MaxSessions 50", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config), "-p", str(port)], stderr=open(folder / "sshd.log", "w"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(folder / 'sshd.log').read_text()}")
            time.sleep(0.05)
    return SshServer(folder, port, identity, known, host_pub, proc)
