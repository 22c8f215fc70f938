"""nginx as the load balancer in front of weightport replicas, from a throwaway config.

Debian's nginx, started as its own process on a free port with its pid file, logs and temp
paths in a scratch directory. The config is the one docs/deploy.md recommends for
production: responses and request bodies stream through unbuffered (``proxy_buffering
off``), no body size limit (weightport enforces its own), and a request whose replica cannot
be reached before it answers is tried on another.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proxy_config(listen: str, upstreams: Sequence[str], workdir: Path) -> str:
    """The nginx config for ``listen`` (``host:port``) balancing over ``upstreams``."""
    servers = "\n".join(
        f"        server {address} max_fails=1 fail_timeout=10s;" for address in upstreams
    )
    temps = "\n".join(
        f"    {kind}_temp_path {workdir}/{kind}_temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log {workdir}/access.log;
{temps}
    upstream weightport {{
{servers}
    }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://weightport;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # Signed URLs carry the host clients used: keep it.
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            # Stream both ways: multi-GB downloads and uploads never touch nginx's disk.
            proxy_buffering off;
            proxy_request_buffering off;
            client_max_body_size 0;
            proxy_read_timeout 300s;
            proxy_send_timeout 300s;
            proxy_next_upstream error timeout http_502 http_503;
        }}
    }}
}}
"""


@dataclass
class Balancer:
    """nginx on 127.0.0.1 balancing over ``upstreams`` (``host:port`` strings)."""

    upstreams: list[str]
    workdir: Path
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Balancer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(proxy_config(f"127.0.0.1:{self.port}", self.upstreams, self.workdir))
        log = (self.workdir / "stderr.log").open("ab")
        args = [
            NGINX,
            "-p",
            str(self.workdir),
            "-c",
            str(conf),
            "-e",
            str(self.workdir / "startup.log"),
        ]
        with log:
            self.process = subprocess.Popen([*args, "-g", "daemon off;"], stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited:\n{(self.workdir / 'stderr.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("nginx did not start listening")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish open requests
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
