"""A throwaway PostgreSQL 15 cluster on 127.0.0.1, for the catalog tests and benchmarks.

Debian's own binaries (``initdb``, ``pg_ctl``) build a cluster in a scratch directory and run
it on a free port with ``fsync=off`` (the data is thrown away: durability buys nothing here).
PostgreSQL refuses to run as root, so as root every command runs as the ``postgres`` user via
``runuser``; as any other user it runs as that user. The unix socket lives in the scratch
directory, never in ``/var/run/postgresql``, so clusters of parallel runs never meet.

A cluster left behind by a run that was killed outright (its ``owner.pid`` names a dead
process) is stopped and removed the next time a cluster starts.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

PG_BIN = Path(os.environ.get("WEIGHTPORT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PREFIX = "weightport-pg-"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_cluster_user(args: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *args]
    return args


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_cluster_user(args), capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PostgresCluster:
    """One cluster: :meth:`start`, :meth:`create_database` per test, :meth:`stop`."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix=PREFIX)))
    port: int = field(default_factory=_free_port)
    running: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """The SQLAlchemy URL of ``database`` (trust authentication on loopback)."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str = "postgres") -> str:
        """The libpq connection string of ``database``, for psycopg and ``psql``."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _pg_ctl(self, *args: str) -> None:
        _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args])

    def halt(self) -> None:
        """Stop the server but keep its data (an outage); :meth:`resume` brings it back."""
        self._pg_ctl("-m", "fast", "-w", "stop")
        self.running = False

    def resume(self) -> None:
        """Start the server again on the same port with the same data."""
        self._pg_ctl("-l", str(self.root / "server.log"), "-o", self._options(), "-w", "start")
        self.running = True

    def _options(self) -> str:
        return " ".join(
            [
                f"-c port={self.port}",
                "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.root}",
                "-c fsync=off",
                "-c synchronous_commit=off",
                "-c full_page_writes=off",
                # Several servers with their own pools, plus the tests' connections.
                "-c max_connections=400",
            ]
        )

    def start(self) -> PostgresCluster:
        reap_abandoned()
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.root, owner.pw_uid, owner.pw_gid)
        (self.root / "owner.pid").write_text(str(os.getpid()))
        _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            ]
        )
        self.resume()
        return self

    def create_database(self, name: str = "") -> str:
        """A new empty database; returns its SQLAlchemy URL."""
        name = name or "t_" + secrets.token_hex(6)
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        """Stop the cluster at once (nothing in it is worth a clean shutdown) and delete it."""
        if self.running:
            with contextlib.suppress(RuntimeError):
                self._pg_ctl("-m", "immediate", "stop")
            self.running = False
        shutil.rmtree(self.root, ignore_errors=True)


def reap_abandoned() -> None:
    """Stop and delete clusters whose test run died without stopping them."""
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        owner = root / "owner.pid"
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(pid):
            continue
        if (root / "data" / "postmaster.pid").exists():
            with contextlib.suppress(RuntimeError):
                _run([str(PG_BIN / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"])
        shutil.rmtree(root, ignore_errors=True)
