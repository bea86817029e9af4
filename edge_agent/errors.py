"""Every exit code of every edgekit CLI, defined once, and the error root they hang from.

One table (EXIT_CODES): a code means the same thing in `edge-agent`, `edge-convert`,
`edge-fleet` and `edge-device`, so a CI script or a systemd unit can act on it without knowing
which tool failed. Each code is tagged with the kind of failure (as Greengrass tags its
deployment errors: user, device, data, network, internal) so the fleet can group failures, and
with the CLIs that can return it, from which each `--help` epilog is generated.

Error classes name their code by `code_name`; an unknown name fails at import time. The
shared `run_main` turns any error into ONE line `PROG: error: ...` and its code, never a
traceback (the traceback goes to the debug log).
"""

from __future__ import annotations

import contextlib
import enum
import json
import logging
import os
import select
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterator

log = logging.getLogger(__name__)


class ErrorType(str, enum.Enum):
    """Who can fix it: what a fleet groups failures by."""

    USER = "user"  # a wrong option, file or command: the person at the keyboard fixes it
    DATA = "data"  # a bundle, model or data set is broken or does not fit
    DEVICE = "device"  # the machine: disk, camera, runtime, a port in use
    NETWORK = "network"  # a broker, server or host cannot be reached
    INTERNAL = "internal"  # a bug or an unexpected state: report it


AGENT, CONVERT, FLEET, DEVICE_CLI = "edge-agent", "edge-convert", "edge-fleet", "edge-device"
ALL = (AGENT, CONVERT, FLEET, DEVICE_CLI)


@dataclass(frozen=True)
class ExitCode:
    """One exit code: the number, a stable name, what it means, who fixes it, which CLIs return it."""

    code: int
    name: str
    meaning: str
    type: ErrorType
    clis: tuple[str, ...] = ALL


_U, _D, _V, _N, _I = ErrorType.USER, ErrorType.DATA, ErrorType.DEVICE, ErrorType.NETWORK, ErrorType.INTERNAL

# Ranges: 1-9 general and fleet operations, 10-19 bundles, 20-29 inputs (profile, model, data),
# 30-39 conversion results, 40-49 runtime and health, 50-59 OTA, 60-69 fleet infrastructure,
# 70-79 camera pipeline, 80-89 provisioning over SSH.
EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(0, "ok", "ok", _U),
    ExitCode(1, "error", "other error", _I),
    ExitCode(2, "usage", "usage (bad command line or option value)", _U),
    ExitCode(3, "bad-input", "bad input file", _U, (AGENT,)),
    ExitCode(4, "unknown-bundle", "unknown bundle (NAME:VERSION not published)", _U, (FLEET,)),
    ExitCode(5, "no-targets", "no target device can take the bundle", _U, (FLEET,)),
    ExitCode(6, "rollout-conflict", "device busy in another rollout", _U, (FLEET,)),
    ExitCode(7, "rollout-halted", "rollout halted (deploy --wait)", _D, (FLEET,)),
    ExitCode(8, "connection-failed", "connection failed (unreachable, refused, bad login)", _N, (AGENT, FLEET, DEVICE_CLI)),
    ExitCode(9, "version-conflict", "version already published with another file", _U, (FLEET,)),
    ExitCode(10, "bundle", "bundle unusable", _D),
    ExitCode(11, "corrupt", "corrupt or truncated bundle archive", _D),
    ExitCode(12, "unsafe-member", "unsafe bundle member (traversal, link, device, duplicate, oversize)", _D),
    ExitCode(13, "signature", "signature or signing key missing, invalid or untrusted", _D),
    ExitCode(14, "hash-mismatch", "bundle file hash or size mismatch", _D),
    ExitCode(15, "manifest", "invalid bundle manifest", _D),
    ExitCode(16, "schema", "unsupported bundle schema (newer than this tool)", _D),
    ExitCode(17, "profile-mismatch", "bundle built for another device profile", _U),
    ExitCode(18, "disk-space", "not enough disk space", _V),
    ExitCode(20, "profile", "bad device profile", _U),
    ExitCode(21, "import", "model cannot be imported", _U, (CONVERT,)),
    ExitCode(22, "data", "calibration/eval data does not fit the model", _U, (CONVERT,)),
    ExitCode(30, "gate", "accuracy gate failed (nothing written; --force writes anyway)", _D, (CONVERT,)),
    ExitCode(31, "too-large", "bundle over the profile's size limit", _D, (CONVERT,)),
    ExitCode(40, "runtime", "runtime could not load or run the model", _V, (AGENT, DEVICE_CLI)),
    ExitCode(41, "health-check", "health check failed (self-test or latency budget): the previous model stays active",
             _D, (AGENT, DEVICE_CLI)),
    ExitCode(50, "slot", "no usable slot (nothing to roll back to)", _V, (AGENT, DEVICE_CLI)),
    ExitCode(51, "download", "download failed or stalled", _N, (AGENT,)),
    ExitCode(52, "refused", "update refused (see message)", _U, (AGENT, DEVICE_CLI)),
    ExitCode(53, "downgrade", "downgrade refused (the fleet must mark a rollback)", _U, (AGENT, DEVICE_CLI)),
    ExitCode(57, "shadow-failed", "shadow run: the new model disagreed with the active one on live inputs "
             "(agreement below the deployment's minimum): the previous model stays active", _D, (AGENT,)),
    ExitCode(60, "broker-unavailable", "no MQTT broker installed (apt-get install mosquitto, or amqtt)", _V, (FLEET,)),
    ExitCode(61, "broker-start-failed", "embedded broker did not start (port in use, bad config)", _V, (FLEET,)),
    ExitCode(62, "registry-unusable", "registry cannot be used (newer schema, unsupported --db)", _V, (FLEET,)),
    ExitCode(63, "not-found", "unknown rollout, device or API token", _U, (FLEET,)),
    ExitCode(64, "action-refused", "the rollout cannot do that now (e.g. resume one that is not paused)", _U, (FLEET,)),
    ExitCode(65, "access-denied", "fleet API: token missing, wrong or revoked, or its role may not do this", _U,
             (FLEET,)),
    ExitCode(66, "api-failed", "fleet API unreachable, or it refused the request (too large, malformed)", _N,
             (FLEET,)),
    ExitCode(67, "registry-unreachable", "registry database unreachable or login refused (PostgreSQL --db URL)", _N,
             (FLEET,)),
    ExitCode(68, "wait-timeout", "deploy --wait gave up (--wait-timeout): the rollout goes on; is `edge-fleet serve` "
             "running?", _N, (FLEET,)),
    ExitCode(69, "token-exists", "a live API token already has that name (revoke it first, or choose another)", _U,
             (FLEET,)),
    ExitCode(70, "source-open", "video source cannot be opened", _V, (AGENT,)),
    ExitCode(71, "source-lost", "live source lost (reconnects exhausted)", _V, (AGENT,)),
    ExitCode(72, "frames-failing", "frames keep failing in the pipeline", _D, (AGENT,)),
    ExitCode(73, "output", "output cannot be written", _V, (AGENT,)),
    ExitCode(74, "port", "port unavailable (metrics or HTTP server)", _V, (AGENT, FLEET)),
    ExitCode(75, "detection-config", "detection settings invalid (--detect or the manifest's postprocess)", _U,
             (AGENT,)),
    ExitCode(80, "host-key", "SSH host key unknown or changed: never accepted silently (check it, then known_hosts or "
             "--accept-new)", _U, (DEVICE_CLI,)),
    ExitCode(81, "ssh-auth", "SSH login refused (key not accepted for that user)", _U, (DEVICE_CLI,)),
    ExitCode(82, "no-python", "no Python >= 3.10 on the device (install python3, or pass --python)", _V, (DEVICE_CLI,)),
    ExitCode(83, "no-profile-fits", "no built-in profile fits the board (pass --profile NAME or a profile file)", _U,
             (DEVICE_CLI,)),
    ExitCode(84, "copy-interrupted", "copy to the device interrupted: nothing installed, run again to resume", _N,
             (DEVICE_CLI,)),
    ExitCode(85, "busy", "the agent is in the middle of an update: try again when it ends", _V, (AGENT, DEVICE_CLI)),
    ExitCode(86, "not-set-up", "the agent is not installed on the device (run edge-device setup first)", _U,
             (DEVICE_CLI,)),
    ExitCode(87, "setup-failed", "installing the agent on the device failed (pip, venv, or --remote-dir not "
             "writable; see the line)", _V, (DEVICE_CLI,)),
    ExitCode(88, "devices-failed", "devices failed with different codes (see the summary table)", _V, (DEVICE_CLI,)),
    ExitCode(89, "broker-login", "the MQTT broker refused the device's login (user name, password or certificate): "
             "give the device its login (edge-fleet devices login ID) again", _U, (AGENT, DEVICE_CLI)),
    ExitCode(130, "interrupted", "interrupted (Ctrl-C)", _U),
    ExitCode(141, "stdout-closed", "the output's reader left early (piped into head): stopped quietly", _U),
)

_BY_NAME = {e.name: e for e in EXIT_CODES}


def exit_code(name: str) -> int:
    """The code registered under `name` (KeyError for a name that is not in EXIT_CODES)."""
    return _BY_NAME[name].code


def entry(name: str) -> ExitCode:
    return _BY_NAME[name]


def exit_codes_epilog(cli: str) -> str:
    """The `exit codes:` section of `cli`'s --help, generated from EXIT_CODES."""
    rows = [e for e in EXIT_CODES if cli in e.clis]
    return "exit codes:\n" + "\n".join(f"  {e.code:>3}  {e.meaning}" for e in rows) + "\n"


def markdown_table() -> str:
    """docs/exit-codes.md's table (a test keeps the page equal to this)."""
    head = "| code | name | meaning | who fixes it | returned by |\n|---|---|---|---|---|\n"
    return head + "".join(f"| {e.code} | `{e.name}` | {e.meaning} | {e.type.value} | {', '.join(e.clis)} |\n"
                          for e in EXIT_CODES)


class EdgekitError(Exception):
    """Root of every failure a user can act on: a one-line message, an exit code, a kind.

    Subclasses set `code_name` (a name in EXIT_CODES); `exit_code`, `kind` and `error_type`
    follow from it. `detail` holds what does not fit on one line (a log tail); CLIs print it with -v.
    """

    code_name = "error"
    exit_code = 1
    kind = "error"
    error_type = ErrorType.INTERNAL

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        e = _BY_NAME[cls.code_name]  # KeyError at import for a code that is not registered
        cls.exit_code, cls.error_type = e.code, e.type
        if "kind" not in cls.__dict__:
            cls.kind = e.name

    def __init__(self, message: str = "", detail: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail

    def __str__(self) -> str:
        return self.message or self.__class__.__name__


def one_line(exc: BaseException | str) -> str:
    """The first line of an error's message (or its class name): what a CLI prints."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return exc.__class__.__name__ if isinstance(exc, BaseException) else ""


def code_of(exc: BaseException) -> int:
    """The exit code an exception maps to: its own `exit_code`, 20 for a profile error, else 1."""
    code = getattr(exc, "exit_code", None)
    if isinstance(code, int) and not isinstance(code, bool):
        return code
    from device_profiles import ProfileError  # device_profiles imports nothing of ours

    return exit_code("profile") if isinstance(exc, ProfileError) else exit_code("error")


_SIGNALLED = threading.Event()  # set by unwind_on_sigterm's handler: run_main then reports any failure as interrupted


@contextlib.contextmanager
def unwind_on_sigterm() -> Iterator[None]:
    """SIGTERM (CI timeouts, systemd stop) unwinds like Ctrl-C, so temporary folders are removed (exit 130)
    instead of the process dying where it stands. Both signals are remembered: a library may turn the
    KeyboardInterrupt into its own error (ONNX Runtime creating a session: 'initialization failed', exit 1)."""

    def handler(signum: int, frame: Any) -> None:
        _SIGNALLED.set()
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _SIGNALLED.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        _SIGNALLED.clear()  # a later run_main in this process (tests, an embedding program) starts afresh


def run_main(prog: str, body: Callable[[], int], json_mode: bool = False, verbose: bool = False) -> int:
    """Run one CLI command: any failure becomes ONE line `PROG: error: ...` on stderr (and a JSON
    error object on stdout with --json) and its exit code. Tracebacks only go to the debug log."""
    try:
        code = body()
        sys.stdout.flush()  # here, not at exit: a reader gone before a short output's only write is seen below
        return code
    except KeyboardInterrupt:
        return _interrupted(prog, json_mode)
    except BrokenPipeError as exc:
        if not _stdout_broken():  # another pipe (an SSH channel closing under edge-device setup): a failure
            return report_failure(prog, exc, json_mode, verbose)
        _quiet_stdout()
        # `edge-fleet status | head`: quiet, and not 0 (the command did not finish; a halted `deploy --wait` must not
        # read as success): 141, what a shell reports for git or coreutils ended by SIGPIPE
        return exit_code("stdout-closed")
    except Exception as exc:  # noqa: BLE001 - the one place every CLI failure is turned into a line
        if _SIGNALLED.is_set():  # the interrupt came out as a library's own error
            log.debug("failure after an interrupt", exc_info=exc)
            return _interrupted(prog, json_mode)
        return report_failure(prog, exc, json_mode, verbose)


def _interrupted(prog: str, json_mode: bool) -> int:
    """Ctrl-C or SIGTERM: one line, and with --json the error object too (a script reading stdout got nothing)."""
    if json_mode:
        print(json.dumps(failure_record(Interrupted("interrupted"))), flush=True)
    print(f"{prog}: interrupted", file=sys.stderr)
    return exit_code("interrupted")


def _stdout_broken() -> bool:
    """Whether stdout is the pipe whose reader left: its flush fails, or poll reports an error on it."""
    try:
        sys.stdout.flush()
        fd = sys.stdout.fileno()
    except (BrokenPipeError, ConnectionResetError):
        return True
    except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured): not a pipe
        return False
    try:
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):  # no poll() (Windows): stdout flushed fine, so it is not broken
        return False


def _quiet_stdout() -> None:
    """Point stdout at /dev/null: the interpreter's last flush to a closed pipe would print a traceback."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # stdout without a file descriptor (captured): nothing to flush to a pipe
        pass


def failure_record(exc: BaseException) -> dict[str, Any]:
    """What `--json` prints on stdout for a failure: {"ok": false, "error": KIND, "message": ..., "exit_code": N}."""
    return {"ok": False, "error": getattr(exc, "kind", exc.__class__.__name__), "message": one_line(exc),
            "exit_code": code_of(exc)}


def report_failure(prog: str, exc: BaseException, json_mode: bool = False, verbose: bool = False) -> int:
    """Print `exc` the edgekit way and return its exit code."""
    code = code_of(exc)
    if code == exit_code("error") and not isinstance(exc, (EdgekitError, OSError)):
        log.debug("unexpected error", exc_info=exc)
    message = one_line(exc)
    if json_mode:
        print(json.dumps(failure_record(exc)))
    print(f"{prog}: error: {message}", file=sys.stderr)
    detail = getattr(exc, "detail", None)
    if detail and verbose:
        print(detail, file=sys.stderr)
    return code


class Interrupted(EdgekitError):
    """Ctrl-C or SIGTERM, as the --json error object reports it."""

    code_name = "interrupted"


class AgentError(EdgekitError):
    """Root of `edge-agent`'s errors (the bundle's own errors hang from EdgekitError directly:
    the converter and the fleet raise them too)."""


if __name__ == "__main__":  # python -m edge_agent.errors > table for docs/exit-codes.md
    print(markdown_table(), end="")
