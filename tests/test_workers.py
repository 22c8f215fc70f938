"""``serve --workers N``: N processes share one port and one SQLite (WAL) catalog, agree on
signed URLs, are replaced when they die, and all stop with the supervisor."""

from __future__ import annotations

import os
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, free_port
from tests.fw_helpers import FireworksApi
from tests.observability_helpers import moved, scrape


def children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (from /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def wait_until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting until {what}")


@pytest.fixture
def workers(server_factory: Callable[..., LiveServer], tmp_path: Path) -> LiveServer:
    server = server_factory(tmp_path / "data", extra_env={"WEIGHTPORT_WORKERS": "3"}).start()
    assert server.process is not None
    supervisor = server.process.pid
    wait_until(lambda: len(children(supervisor)) == 3, "three workers run")
    return server


def test_workers_share_one_catalog_and_one_signing_key(workers: LiveServer) -> None:
    account = f"w-{secrets.token_hex(3)}"
    api = FireworksApi(workers.base_url, account, workers.new_account(account))
    files = {"config.json": b'{"model_type": "llama"}', "weights.bin": os.urandom(50_000)}
    try:
        # Every call is a new connection: the kernel spreads them over the workers, so URLs
        # signed by one worker are verified by others, and writes by one are read by others.
        signed = api.publish("m", files)
        for _ in range(10):
            for path, url in signed.items():
                response = httpx.get(url)
                assert response.status_code == 200 and response.content == files[path]
        # Concurrent creates of one id from many connections: one winner, clean 409s.
        assert sorted(api.create_at_once("twin", 8)) == [200] + [409] * 7
    finally:
        api.close()
    # Ctrl-C (SIGINT) stops them all.
    assert workers.process is not None
    pids = children(workers.process.pid)
    workers.process.send_signal(signal.SIGINT)
    assert workers.process.wait(timeout=60) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), "every worker has exited")


def test_a_dead_worker_is_replaced_and_sigterm_stops_all(workers: LiveServer) -> None:
    assert workers.process is not None
    supervisor = workers.process.pid
    victim = min(children(supervisor))
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in children(supervisor), "the dead worker is reaped")
    wait_until(lambda: len(children(supervisor)) == 3, "a new worker replaces it")
    for _ in range(6):
        assert httpx.get(f"{workers.base_url}/healthz", timeout=60).status_code == 200
    pids = children(supervisor)
    workers.process.send_signal(signal.SIGTERM)
    assert workers.process.wait(timeout=60) == 0
    wait_until(lambda: not any(alive(pid) for pid in pids), "every worker has exited")


def test_workers_of_a_killed_supervisor_exit_by_themselves(workers: LiveServer) -> None:
    assert workers.process is not None
    pids = children(workers.process.pid)
    workers.kill()
    wait_until(lambda: not any(alive(pid) for pid in pids), "the orphaned workers exit")


def test_workers_report_one_set_of_metrics_on_the_metrics_port(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    port = free_port()
    env = {"WEIGHTPORT_WORKERS": "2", "WEIGHTPORT_METRICS_LISTEN": f"127.0.0.1:{port}"}
    server = server_factory(tmp_path / "data", demo=False, extra_env=env).start()
    assert server.process is not None
    supervisor = server.process.pid
    wait_until(lambda: len(children(supervisor)) == 2, "two workers run")
    metrics = f"http://127.0.0.1:{port}/metrics"
    labels = {"method": "GET", "route": "/v1/whoami", "status": "401"}
    before = scrape(metrics)
    # New connections each: the kernel spreads them over both workers.
    for _ in range(20):
        assert httpx.get(f"{server.base_url}/v1/whoami").status_code == 401
    # Whichever worker answers a scrape counts every worker's requests.
    for _ in range(5):
        assert moved(before, scrape(metrics), "weightport_http_requests_total", **labels) == 20
