"""Real servers for the benchmarks: ``weightport serve`` and nginx, on 127.0.0.1.

Both run as their own processes (their CPU and RSS are read from /proc by pid); nginx gets a
throwaway config in a scratch directory: sendfile on, tcp_nopush on, no access log.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
KEY_PATTERN = re.compile(r"wp_[0-9a-f]+_[A-Za-z0-9_-]+")
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited early:\n{log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class WeightportServer:
    """``python -m weightport serve --no-demo`` on loopback with its own data directory."""

    data_dir: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_key: str = ""
    process: subprocess.Popen[bytes] | None = None
    #: How long to wait for the admin key a first start prints (a later start prints none).
    key_wait_s: float = 30.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("server is not running")
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}-server.log"

    def start(self) -> WeightportServer:
        """Start and wait until it accepts connections; reads the admin key it prints."""
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WEIGHTPORT_LOG_LEVEL": "warning"}
        env.update(self.env)
        args = [sys.executable, "-m", "weightport", "serve", "--data-dir", str(self.data_dir)]
        args += ["--port", str(self.port), "--no-demo"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(args, stdout=log, stderr=log, env=env)
        try:
            self._wait_ready(self.process)
        except BaseException:  # a start that fails (or is interrupted) leaves no server behind
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        _wait_listening(self.port, process, self.log_path)
        # The banner with the key is printed once the server answers, a moment after it
        # starts listening: wait for it rather than read the log once.
        deadline = time.monotonic() + self.key_wait_s
        while not self.admin_key and time.monotonic() < deadline:
            found = KEY_PATTERN.search(self.log_path.read_text())
            if found:
                self.admin_key = found.group(0)
            elif process.poll() is not None:
                break
            else:
                time.sleep(0.05)
        if not self.admin_key:
            raise RuntimeError(f"no admin key in the server log:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        _stop(self.process, signal.SIGTERM)
        self.process = None

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"}

    def api(self, method: str, path: str, body: Any = None) -> Any:
        """A JSON API call as the admin; raises with the server's message on an error."""
        data = None if body is None else json.dumps(body).encode()
        headers = {**self.auth(), "Content-Type": "application/json"}
        response = _HTTP.request(method, self.base_url + path, body=data, headers=headers)
        if response.status >= 300:
            raise RuntimeError(f"{method} {path}: HTTP {response.status} {response.data[:300]!r}")
        return json.loads(response.data)

    def cli(self, *args: str) -> str:
        """Run ``python -m weightport ARGS`` against this server; returns stdout."""
        env = {**os.environ, "WEIGHTPORT_BASE_URL": self.base_url}
        env["WEIGHTPORT_API_KEY"] = self.admin_key
        done = subprocess.run(
            [sys.executable, "-m", "weightport", *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        if done.returncode:
            raise RuntimeError(f"weightport {' '.join(args)} failed:\n{done.stderr}")
        return done.stdout

    def import_finetune(self, base_model: str, final: Path, *, full: bool = False) -> str:
        """``weightport finetunes import`` of one final checkpoint (the server keeps running:
        same data dir); returns the fine-tune id."""
        args = ["--data-dir", str(self.data_dir), "--base-model", base_model]
        out = self.cli("finetunes", "import", *args, "--final", f"1={final}", *(["--full"] * full))
        return out.strip().splitlines()[-1]

    def publish(self, directory: Path, model_id: str, kind: str = "HF_BASE_MODEL") -> None:
        """create → upload → validate, through the real pusher (signed PUTs over HTTP)."""
        self.cli("models", "push", str(directory), "--model", model_id, "--kind", kind, "--quiet")

    def signed_urls(self, model_id: str, account: str = "admin") -> dict[str, str]:
        """``:getDownloadEndpoint`` — path → signed GET URL."""
        body = self.api("GET", f"/v1/accounts/{account}/models/{model_id}:getDownloadEndpoint")
        urls: dict[str, str] = body["filenameToSignedUrls"]
        return urls


@dataclass
class Nginx:
    """nginx serving ``root`` from a throwaway config: sendfile, tcp_nopush, no access log."""

    root: Path
    workdir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("nginx is not running")
        return self.process.pid

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def config(self) -> str:
        work = self.workdir
        temps = "\n".join(
            f"    {kind}_temp_path {work}/{kind}_temp;"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # worker_processes auto: nginx's recommended production setting (one per core).
        return f"""worker_processes auto;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
{temps}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
    }}
}}
"""

    def start(self) -> Nginx:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nginx.conf"
        conf.write_text(self.config())
        log = self.workdir / "stderr.log"
        args = [
            NGINX,
            "-p",
            str(self.workdir),
            "-c",
            str(conf),
            "-e",
            str(self.workdir / "startup.log"),
        ]
        with log.open("ab") as out:
            self.process = subprocess.Popen([*args, "-g", "daemon off;"], stdout=out, stderr=out)
        try:
            _wait_listening(self.port, self.process, log)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        _stop(self.process, signal.SIGQUIT)  # graceful: workers finish, then exit
        self.process = None
