"""Two replicas behind nginx, sharing one PostgreSQL catalog and one SeaweedFS bucket.

What one replica does, the other sees: a model uploaded through one downloads through the
other, a URL signed by one verifies on the other, concurrent creates through the balancer have
one winner, and a replica killed with ``kill -9`` in the middle of a download leaves
``weightport download`` and the together CLI able to finish through the balancer.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.balancer import Balancer
from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.pg_cluster import PostgresCluster
from tests.seaweedfs import SeaweedFS
from tests.tcp_proxy import TcpProxy
from tests.together_cli import CLI
from weightport import demo

#: Big enough that a throttled download is still running when a replica is killed.
BIG = 24 << 20
RATE = 6e6


@dataclass
class Stack:
    replicas: list[LiveServer]
    balancer: Balancer
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def stack(
    postgres: PostgresCluster, seaweedfs: SeaweedFS, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("replicas")
    env = {
        **seaweedfs.env(),
        "WEIGHTPORT_DATABASE_URL": postgres.create_database(),
        "WEIGHTPORT_STORAGE_URL": f"s3://{seaweedfs.bucket}/{secrets.token_hex(6)}",
        "WEIGHTPORT_S3_ENDPOINT": seaweedfs.endpoint,
        "WEIGHTPORT_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(32)}",
        # File bytes through the replicas (their own signed URLs), not the store's presigned
        # URLs: what is tested here is replicas verifying each other's URLs and a transfer
        # surviving the death of the replica serving it.
        "WEIGHTPORT_S3_PROXY": "true",
        # Short leases, so a build a dead replica held is taken over within the test.
        "WEIGHTPORT_ARCHIVE_BUILD_LEASE": "3",
    }
    replicas = [LiveServer(root / f"replica-{i}", extra_env=env) for i in range(2)]
    balancer: Balancer | None = None
    try:
        for replica in replicas:
            replica.start()
        balancer = Balancer([f"127.0.0.1:{r.port}" for r in replicas], root / "nginx").start()
        (key,) = [r.admin_key for r in replicas if r.admin_key]
        yield Stack(replicas, balancer, key)
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()


def _restart_dead(stack: Stack) -> None:
    for replica in stack.replicas:
        if replica.process is None or replica.process.poll() is not None:
            replica.start()


@pytest.fixture
def api(stack: Stack) -> Iterator[FireworksApi]:
    _restart_dead(stack)  # a test before may have killed one
    account = f"r-{secrets.token_hex(3)}"
    client = FireworksApi(stack.balancer.base_url, account, stack.replicas[0].new_account(account))
    yield client
    client.close()


def _on(replica: LiveServer, url: str) -> str:
    """``url`` sent to ``replica`` directly (same path and query)."""
    parts = urlsplit(url)
    return f"{replica.base_url}{parts.path}?{parts.query}"


def test_uploaded_through_one_downloaded_through_the_other(stack: Stack, api: FireworksApi) -> None:
    one, other = stack.replicas
    files = {"config.json": b'{"model_type": "llama"}', "weights.bin": os.urandom(300_000)}
    on_one = FireworksApi(one.base_url, api.account, api.http.headers["Authorization"][7:])
    try:
        on_one.publish("m", files)
        signed_by_one = on_one.download_urls("m")["filenameToSignedUrls"]
    finally:
        on_one.close()
    on_other = FireworksApi(other.base_url, api.account, api.http.headers["Authorization"][7:])
    try:
        signed_by_other = on_other.download_urls("m")["filenameToSignedUrls"]
    finally:
        on_other.close()
    for path, data in files.items():
        # Each replica's signature verifies on the other replica.
        assert httpx.get(_on(other, signed_by_one[path])).content == data
        assert httpx.get(_on(one, signed_by_other[path])).content == data
        tampered = _on(other, signed_by_one[path]).replace("X-Goog-Expires=", "X-Goog-Expires=9")
        assert httpx.get(tampered).status_code == 403


def test_concurrent_creates_through_the_balancer_have_one_winner(api: FireworksApi) -> None:
    assert sorted(api.create_at_once("twin", 8)) == [200] + [409] * 7


def test_one_build_when_both_replicas_are_asked(stack: Stack) -> None:
    _restart_dead(stack)
    job = httpx.get(f"{stack.balancer.base_url}/v1/fine-tunes", headers=stack.auth).json()
    (demo_job,) = [j["id"] for j in job["data"] if j["suffix"] == demo.DEMO_SUFFIX]
    start = threading.Barrier(2)
    queued: list[bool] = []

    def ask(replica: LiveServer) -> None:
        with httpx.Client(headers=stack.auth, timeout=60) as http:
            start.wait()
            url = f"{replica.base_url}/weightport/v1/fine-tunes/{demo_job}/archives"
            queued.append(http.post(url, json={"checkpoint": "merged"}).json()["queued"])

    threads = [threading.Thread(target=ask, args=(r,)) for r in stack.replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(queued) == [False, True]
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        body = httpx.get(f"{stack.balancer.base_url}/v1/fine-tunes/{demo_job}", headers=stack.auth)
        builds = [b for b in body.json()["weightport_archives"] if b["artifact"] == "merged"]
        if builds and builds[0]["state"] in ("ready", "failed"):
            break
        time.sleep(0.2)
    assert builds[0]["state"] == "ready", builds


def _serving(stack: Stack) -> LiveServer | None:
    """The replica with an open connection from the balancer (a transfer in progress)."""
    for replica in stack.replicas:
        if _established_to(replica.port):
            return replica
    return None


def _established_to(port: int) -> bool:
    wanted = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(wanted) and fields[3] == "01":  # local address, ESTABLISHED
                return True
    return False


def _kill_serving_replica_when(stack: Stack, progressed: Callable[[], bool]) -> LiveServer:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progressed():
            serving = _serving(stack)
            if serving is not None:
                serving.kill()
                return serving
        time.sleep(0.05)
    raise AssertionError("the download never got going")


def _weights(seed: int) -> dict[str, bytes]:
    tensor = np.random.default_rng(seed).standard_normal((64, 32), dtype=np.float32)
    return {"config.json": b'{"model_type": "llama"}', "model.safetensors": save({"w": tensor})}


@pytest.fixture
def big_model(api: FireworksApi) -> tuple[str, dict[str, bytes]]:
    """A model that is also a valid Full checkpoint of "base" (same tensor shapes)."""
    files = {**_weights(2), "big.bin": os.urandom(BIG)}
    api.publish("big", files)
    return "big", files


def test_weightport_download_survives_a_replica_killed_mid_download(
    stack: Stack, api: FireworksApi, big_model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    model_id, files = big_model
    out = tmp_path / "out"
    with TcpProxy(stack.balancer.port, rate=RATE).running() as slow:
        args = [
            sys.executable,
            "-m",
            "weightport",
            "download",
            "model",
            f"{api.account}/{model_id}",
        ]
        args += ["-o", str(out), "--base-url", slow.base_url, "--quiet", "--connections", "2"]
        env = {**os.environ, "WEIGHTPORT_API_KEY": api.http.headers["Authorization"][7:]}

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(args, env=env, capture_output=True, text=True, check=False)

        with ThreadResult(run) as first:
            _kill_serving_replica_when(stack, lambda: _partial_bytes(out) > BIG // 5)
        done = first.result
        if done.returncode != 0:  # resumable: run it again, as a user would
            done = run()
    assert done.returncode == 0, done.stderr
    for path, data in files.items():
        assert (out / path).read_bytes() == data


def test_together_cli_resumes_through_the_balancer_after_a_replica_dies(
    stack: Stack, api: FireworksApi, big_model: tuple[str, dict[str, bytes]], tmp_path: Path
) -> None:
    model_id, _ = big_model
    key = api.http.headers["Authorization"][7:]
    api.publish("base", _weights(1))
    registered = httpx.post(
        f"{stack.balancer.base_url}/weightport/v1/fine-tunes",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "base_model": "base",
            "training_type": "Full",
            "checkpoints": [{"step": 5, "kind": "final", "model": model_id}],
        },
    )
    assert registered.status_code == 200, registered.text
    ft_id = registered.json()["id"]
    url = f"{stack.balancer.base_url}/v1/finetune/download?ft_id={ft_id}"
    reference = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=120).content
    target = tmp_path / "ft.tar.zst"
    with TcpProxy(stack.balancer.port, rate=RATE).running() as slow:
        env = {
            **os.environ,
            "HOME": str(tmp_path),
            "TOGETHER_BASE_URL": slow.base_url,
            "TOGETHER_API_KEY": key,
            "TOGETHER_TELEMETRY_DISABLED": "1",
            "TOGETHER_DISABLE_VERSION_CHECK": "1",
            "NO_COLOR": "1",
        }
        args = [CLI, "fine-tuning", "download", ft_id, "-o", str(target)]

        def run() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                args, env=env, capture_output=True, text=True, cwd=tmp_path, check=False
            )

        with ThreadResult(run) as first:
            _kill_serving_replica_when(stack, lambda: _partial_bytes(tmp_path) > BIG // 5)
        done = first.result
        # Re-run as a user would. nginx may still answer a 502 for a moment while it notices
        # the dead peer (its own failover, not the server's), so up to three times.
        for _ in range(3):
            if done.returncode == 0:
                break
            time.sleep(1)
            done = run()
    assert done.returncode == 0, done.stdout + done.stderr
    assert hashlib.sha256(target.read_bytes()).hexdigest() == hashlib.sha256(reference).hexdigest()


def _partial_bytes(folder: Path) -> int:
    """Bytes written so far under ``folder`` (the downloaders write in place)."""
    if not folder.exists():
        return 0
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


class ThreadResult:
    """Run ``fn`` on a thread for the duration of a ``with`` block; ``result`` after it."""

    def __init__(self, fn: Callable[[], subprocess.CompletedProcess[str]]) -> None:
        self._fn = fn
        self._thread = threading.Thread(target=self._run)
        self._result: subprocess.CompletedProcess[str] | None = None

    def _run(self) -> None:
        self._result = self._fn()

    def __enter__(self) -> ThreadResult:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.join()

    @property
    def result(self) -> subprocess.CompletedProcess[str]:
        assert self._result is not None
        return self._result
