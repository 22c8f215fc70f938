"""Shared fixtures: real weightport servers on 127.0.0.1, in their own processes."""

from __future__ import annotations

import errno
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.orm import Session

from tests.pg_cluster import PostgresCluster
from tests.seaweedfs import SeaweedFS, running_seaweedfs
from tests.stacks import STACKS, stack_env
from weightport import demo
from weightport.catalog import accounts, finetunes
from weightport.catalog.db import Catalog

KEY_PATTERN = re.compile(r"wp_[0-9a-f]+_[A-Za-z0-9_-]+")
#: How the banner of ``weightport serve`` begins, printed once it answers requests.
BANNER_START = "weightport serving on "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveServer:
    """A ``weightport serve`` process on loopback with its own data directory."""

    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    demo: bool = True
    admin_key: str = ""
    process: subprocess.Popen[str] | None = None
    log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> LiveServer:
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-server.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **self.extra_env}
        args = [sys.executable, "-m", "weightport", "serve", "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port), "--demo" if self.demo else "--no-demo"]
        logged = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log_path.read_text()}")
            # The port accepts connections from the moment it is bound; the banner comes
            # once the server answers them (and carries the first start's key).
            if BANNER_START.encode() in self.log_path.read_bytes()[logged:]:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"server did not start:\n{self.log_path.read_text()}")
        if not self.admin_key:
            found = KEY_PATTERN.search(self.log_path.read_text())
            if found:
                self.admin_key = found.group(0)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def catalog(self) -> Catalog:
        url = self.extra_env.get("WEIGHTPORT_DATABASE_URL")
        return Catalog.open(url or f"sqlite:///{self.data_dir / 'catalog.sqlite3'}", upgrade=False)

    def new_account(self, account_id: str) -> str:
        """Create an account (if new) and return a fresh API key for it."""
        catalog = self.catalog()
        try:

            def run(session: Session) -> str:
                accounts.ensure_account(session, account_id)
                return accounts.create_key(session, account_id).secret

            return catalog.call(run)
        finally:
            catalog.close()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the whole session (demo seeded); tests make their own accounts."""
    server = LiveServer(tmp_path_factory.mktemp("live") / "data").start()
    yield server
    server.stop()


def demo_job_of(server: LiveServer) -> str:
    """The id of the demo LoRA fine-tune seeded into a server's admin account."""
    catalog = server.catalog()
    try:
        jobs = catalog.call(lambda s: finetunes.list_fine_tunes(s, "admin"))
    finally:
        catalog.close()
    (job,) = [j for j in jobs if j.suffix == demo.DEMO_SUFFIX]
    return job.id


@pytest.fixture(scope="session")
def demo_job(live_server: LiveServer) -> str:
    """The id of the demo LoRA fine-tune seeded into the live server's admin account."""
    return demo_job_of(live_server)


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    """One SeaweedFS S3 server for the session (its own free ports), stopped at the end."""
    with running_seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture(scope="session", params=STACKS)
def stack_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A demo-seeded server per stack (see ``tests/stacks.py``): suites that use it run on
    every stack."""
    env = stack_env(request.param, request)
    server = LiveServer(tmp_path_factory.mktemp(f"stack-{request.param}") / "data", extra_env=env)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def stack_demo_job(stack_server: LiveServer) -> str:
    """The demo LoRA fine-tune of ``stack_server``."""
    return demo_job_of(stack_server)


@pytest.fixture
def server_factory() -> Iterator[Callable[..., LiveServer]]:
    """Servers a test may kill and restart (``LiveServer`` arguments); all killed at the end."""
    started: list[LiveServer] = []

    def make(*args: Any, **kwargs: Any) -> LiveServer:
        server = LiveServer(*args, **kwargs)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop(signal.SIGKILL)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 MiB tmpfs of the test's own, to fill for real (skipped where mounting is refused)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def fill(disk: Path) -> Path:
    """Write a file until the filesystem refuses another byte; returns it (delete to free)."""
    filler = disk / "filler"
    block = b"\0" * (1 << 20)
    with filler.open("wb", buffering=0) as fh:
        while True:
            try:
                fh.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                block = block[: len(block) // 2]
                if not block:
                    return filler


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """A throwaway PostgreSQL 15 cluster for the session, stopped and deleted at the end."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty catalog database on each engine: SQLite in a file, a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    cluster: PostgresCluster = request.getfixturevalue("postgres")
    return cluster.create_database()
