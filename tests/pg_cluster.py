"""A real, throw-away PostgreSQL server for tests and benchmarks (Debian's `postgresql` package).

`initdb` into a temporary folder and `pg_ctl start` on a free loopback port, as an unprivileged
user (PostgreSQL refuses to run as root: as root we run it as the `postgres` system user the
package creates). Trust authentication on loopback only; each test gets its own database.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from .ports import free_port

USER = "edgekit"  # the database superuser initdb creates


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them in /usr/lib/postgresql/VERSION/bin, off PATH."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install postgresql (scripts/setup_env.sh does)")
    return path



class PgCluster:
    """start() -> admin URL; url(dbname); create_database(); stop() (or a context manager)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="edgekit-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._as: list[str] = []

    def _run(self, *cmd: str) -> None:
        done = subprocess.run([*self._as, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")

    def start(self) -> "PgCluster":
        if os.geteuid() == 0:  # initdb and postgres refuse root: run them as the package's system user
            user = pwd.getpwnam("postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
            self.root.mkdir(parents=True, exist_ok=True)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "--no-sync", "-E", "UTF8")
        self.port = free_port()
        self.restart()
        return self

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str | None = None) -> str:
        """A new empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (immediate: like a crash, nothing to wait for); start() again works."""
        if self.data.exists():
            subprocess.run([*self._as, pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
                           capture_output=True, timeout=60)

    def restart(self) -> None:
        """Start the (stopped) server on its port. fsync off: test data need not survive power loss."""
        opts = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off -c autovacuum=off "
                "-c max_connections=300")
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "PgCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.remove()
