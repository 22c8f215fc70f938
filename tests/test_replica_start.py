"""Replicas on a shared PostgreSQL catalog: they start together safely, refuse to start
without shared signing keys, and tell a load balancer when the catalog is gone."""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.pg_cluster import PostgresCluster


def test_health_and_readiness_of_a_healthy_server(live_server: LiveServer) -> None:
    health = httpx.get(f"{live_server.base_url}/healthz")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    ready = httpx.get(f"{live_server.base_url}/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"catalog": "ok", "store": "ok"}}


def test_replicas_starting_together_on_a_fresh_catalog_all_serve(
    server_factory: Callable[..., LiveServer], postgres: PostgresCluster, tmp_path: Path
) -> None:
    env = {
        "WEIGHTPORT_DATABASE_URL": postgres.create_database(),
        "WEIGHTPORT_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(32)}",
    }
    replicas = [server_factory(tmp_path / f"r{i}", extra_env=env) for i in range(3)]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(lambda replica: replica.start(), replicas))
    # Migrations, the admin account and the demo seed happened once: one replica printed
    # the first key, and it works on every replica.
    keys = [r.admin_key for r in replicas if r.admin_key]
    assert len(keys) == 1
    for replica in replicas:
        models = httpx.get(
            f"{replica.base_url}/v1/accounts/admin/models",
            headers={"Authorization": f"Bearer {keys[0]}"},
        )
        assert models.status_code == 200 and models.json()["totalSize"] == 1


def test_a_shared_catalog_without_signing_keys_refuses_to_start(
    postgres: PostgresCluster, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "weightport", "serve", "--data-dir", str(tmp_path / "d")],
        env={"WEIGHTPORT_DATABASE_URL": postgres.create_database(), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "WEIGHTPORT_SIGNING_KEYS" in lines[0], done.stderr


@pytest.fixture
def outage_cluster() -> Iterator[PostgresCluster]:
    """A cluster of its own: this test stops and restarts it."""
    cluster = PostgresCluster()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


def test_a_catalog_outage_is_503_and_readyz_says_why(
    server_factory: Callable[..., LiveServer], outage_cluster: PostgresCluster, tmp_path: Path
) -> None:
    env = {
        "WEIGHTPORT_DATABASE_URL": outage_cluster.create_database(),
        "WEIGHTPORT_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(32)}",
    }
    server = server_factory(tmp_path / "data", extra_env=env, demo=False).start()
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    models = f"{server.base_url}/v1/accounts/admin/models"
    assert httpx.get(models, headers=auth).status_code == 200

    outage_cluster.halt()
    ready = httpx.get(f"{server.base_url}/readyz")
    assert ready.status_code == 503, ready.text
    checks = ready.json()["checks"]
    assert checks["store"] == "ok" and "unreachable" in checks["catalog"]
    assert httpx.get(f"{server.base_url}/healthz").status_code == 200
    answer = httpx.get(models, headers=auth)
    assert answer.status_code == 503
    assert answer.json()["code"] == 14  # UNAVAILABLE, in the Fireworks envelope
    assert answer.headers["retry-after"] == "1" and answer.headers["x-should-retry"] == "true"
    together = httpx.get(f"{server.base_url}/v1/fine-tunes", headers=auth)
    assert together.status_code == 503 and together.json()["error"]["code"] == "unavailable"

    outage_cluster.resume()
    assert httpx.get(f"{server.base_url}/readyz").status_code == 200
    assert httpx.get(models, headers=auth).status_code == 200
