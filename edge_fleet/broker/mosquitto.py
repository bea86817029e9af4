"""Managed Mosquitto 2.x: a child process driven by a generated config (preferred broker).

Fast, persistent (retained messages and sessions survive a restart), enforces ACLs, TLS and
packet size limits. The config text comes from `mosquitto_config.render_mosquitto_config`;
this module only finds the binaries, writes the files and runs the process.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from ..errors import BrokerStartError, BrokerUnavailable
from .base import START_TIMEOUT_S, STOP_TIMEOUT_S, Broker, die_with_parent, port_open
from .mosquitto_config import MosquittoSettings, TlsListener, max_packet_size, render_mosquitto_config

log = logging.getLogger(__name__)


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None if it is not installed."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _find_mosquitto_passwd(mosquitto: str) -> str | None:
    found = shutil.which("mosquitto_passwd")
    if found:
        return found
    for d in (Path(mosquitto).parent, Path("/usr/bin"), Path("/usr/local/bin")):
        if os.access(d / "mosquitto_passwd", os.X_OK):
            return str(d / "mosquitto_passwd")
    return None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _last_error(*logs: Path) -> str:
    """The last line of the logs that says what went wrong (Mosquitto writes 'Error: ...')."""
    for path in logs:
        for line in reversed(_tail(path).splitlines()):
            if "rror" in line:
                return line.split(": ", 1)[-1] if line[:4].isdigit() else line
    return "no error in its log"


def _existing(path: Path, what: str) -> Path:
    resolved = Path(path).resolve()
    if not resolved.is_file():
        raise ValueError(f"{what} must be an existing file: {resolved}")
    return resolved


class MosquittoBroker(Broker):
    """Mosquitto child process; its config, password file, log and persistence live in data_dir."""

    kind = "mosquitto"

    def __init__(self, binary: str, data_dir: Path, host: str, port: int, users: dict[str, str],
                 max_message_mb: float | None = None, acl_file: Path | None = None,
                 start_timeout: float = START_TIMEOUT_S, tls: TlsListener | None = None) -> None:
        super().__init__(host, port, data_dir, tls=tls is not None)
        self.binary, self.start_timeout = binary, start_timeout
        self.log_file = data_dir / "mosquitto.log"
        self.stderr_file = data_dir / "mosquitto.stderr.log"
        self.conf_file = data_dir / "mosquitto.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        self._reloading = threading.Lock()  # one password file rebuild at a time (server loop and add_device)
        persist_dir = data_dir / "persistence"
        persist_dir.mkdir(exist_ok=True)
        if tls is not None:
            tls = TlsListener(_existing(tls.cafile, "TLS cafile"), _existing(tls.certfile, "TLS certfile"),
                              _existing(tls.keyfile, "TLS keyfile"), tls.require_certificate)
        settings = MosquittoSettings(
            host=host, port=port, persistence_dir=persist_dir, log_file=self.log_file,
            password_file=self._write_passwords(users) if users else None,
            acl_file=_existing(acl_file, "acl_file") if acl_file is not None else None,
            max_packet_size=max_packet_size(max_message_mb) if max_message_mb is not None else None,
            tls=tls,
            # As root mosquitto drops to user "mosquitto", which cannot write our data_dir.
            run_as_user=pwd.getpwuid(os.geteuid()).pw_name if os.name == "posix" and os.geteuid() == 0 else None,
        )
        self.conf_file.write_text(render_mosquitto_config(settings))

    def _write_passwords(self, users: dict[str, str]) -> Path:
        passwd = _find_mosquitto_passwd(self.binary)
        if passwd is None:
            raise BrokerUnavailable("mosquitto_passwd not found (it ships with the mosquitto package)")
        assert self.data_dir is not None
        pw_file = self.data_dir / "passwd"
        # Built aside and renamed into place: a reload still in progress (an earlier SIGHUP) must never read a
        # half-written file, which dropped the fleet server's own login ("Not authorized") under load.
        staging = self.data_dir / "passwd.new"
        staging.unlink(missing_ok=True)
        staging.touch(mode=0o600)
        for user, secret in users.items():
            if ":" in user:
                raise ValueError(f"MQTT username may not contain ':': {user!r}")
            subprocess.run([passwd, "-b", str(staging), user, secret], check=True, capture_output=True, timeout=30)
        os.replace(staging, pw_file)
        return pw_file

    def reload_users(self, users: dict[str, str], timeout: float = 10.0) -> None:
        """New logins without a restart: rewrite the password file and SIGHUP; returns once Mosquitto logged
        the reload (it re-reads the password file and the ACL before it handles the next connection).
        Callers on several threads take turns: they would otherwise build the same staging file at once.

        Revoking works through this alone: on a reload Mosquitto (2.0.11 here) checks every connected client
        against the new password file and disconnects those whose user is gone or whose password changed
        (tests/test_fleet_device_logins.py), so no broker restart or $CONTROL API is needed to drop them."""
        with self._reloading:
            self._write_passwords(users)
            if self.proc is None or self.proc.poll() is not None:
                return
            offset = self.log_file.stat().st_size if self.log_file.exists() else 0
            self.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and not self._logged(offset, b"Reloading config"):
                time.sleep(0.02)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def _start(self) -> None:
        log.debug("starting %s -c %s", self.binary, self.conf_file)
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with open(self.stderr_file, "ab") as err:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.conf_file)],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, close_fds=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            # Mosquitto logs "... running" only after all listeners are bound, so a
            # foreign process squatting on the port is not mistaken for our broker.
            if self._logged_running(log_offset) and port_open(self.host, self.port):
                if self.proc.poll() is None:
                    return
                break
            time.sleep(0.02)
        rc = self.proc.poll()
        self._stop()
        raise BrokerStartError(
            f"mosquitto did not start on {self.host}:{self.port} within {self.start_timeout}s (exit code {rc}): "
            f"{_last_error(self.log_file, self.stderr_file)} (config {self.conf_file}, log {self.log_file})",
            detail=f"--- {self.log_file} (tail) ---\n{_tail(self.log_file)}\n"
                   f"--- {self.stderr_file} (tail) ---\n{_tail(self.stderr_file)}",
        )

    def _logged_running(self, offset: int) -> bool:
        return self._logged(offset, b" running")

    def _logged(self, offset: int, text: bytes) -> bool:
        try:
            with open(self.log_file, "rb") as f:
                f.seek(offset)
                return text in f.read()
        except OSError:
            return False

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto pid %d ignored SIGTERM; killing (unsaved state may be lost)", proc.pid)
            proc.kill()
            proc.wait()
        log.info("mosquitto pid %d stopped (rc=%s)", proc.pid, proc.returncode)
