"""Clients that stop, against a real server with small timeouts: responses nobody reads are
dropped after ``send_timeout`` and their memory is returned; slow readers are never cut;
trickled request heads are closed after ``header_timeout``; stalled bodies get 408."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.merged_fine_tune import publish_merged_fine_tune
from tests.raw_http import ResponseReader, connect, request_head

TIMEOUT_S = 2
#: Stalled clients in the memory test: each pins a few MiB while it is held.
STALLED = 40
#: Bounds on waits for things that must happen (a server that never drops would hang).
GUARD_S = 60.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "WEIGHTPORT_SEND_TIMEOUT": str(TIMEOUT_S),
        "WEIGHTPORT_BODY_TIMEOUT": str(TIMEOUT_S),
        "WEIGHTPORT_HEADER_TIMEOUT": str(TIMEOUT_S),
        "WEIGHTPORT_MAX_COMPUTED_DOWNLOADS": "0",
        "WEIGHTPORT_ARCHIVE_ENCODING": "stored",
        "WEIGHTPORT_LOG_LEVEL": "info",
    }
    live = LiveServer(tmp_path_factory.mktemp("slow") / "data", extra_env=env, demo=False)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def merged_path(server: LiveServer) -> str:
    ft_id = publish_merged_fine_tune(server.base_url, "admin", server.admin_key)
    return f"/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def open_sockets(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    count = 0
    for fd in fds.iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            continue
    return count


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GUARD_S
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {GUARD_S:g} s: {what}")
        time.sleep(0.1)


def stalled(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """A connection that sends a GET and never reads a byte of the answer."""
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(request_head("GET", path, headers))
    return sock


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server reset or closed the connection (reads what is buffered first)."""
    sock.settimeout(GUARD_S)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return True
    return True  # EOF


def drops(server: LiveServer) -> int:
    """How many clients the server has dropped for its send timeout so far."""
    assert server.log_path is not None
    return server.log_path.read_text().count("(send_timeout)")


def auth(server: LiveServer) -> dict[str, str]:
    return {"Authorization": f"Bearer {server.admin_key}"}


def test_non_reading_clients_are_dropped_and_memory_returns(
    server: LiveServer, merged_path: str
) -> None:
    assert server.process is not None
    pid = server.process.pid
    # One full download first: the plan, the merge code and its buffers are warm, and the
    # memory a download leaves behind has been returned (what the baseline must include).
    full = httpx.get(server.base_url + merged_path, headers=auth(server), timeout=GUARD_S)
    assert full.status_code == 200 and len(full.content) > 60 << 20
    time.sleep(8)  # memory is returned 5 s after computed downloads end
    baseline = rss_mib(pid)
    idle_sockets = open_sockets(pid)

    dropped_before = drops(server)
    clients = [stalled(server, merged_path, auth(server)) for _ in range(STALLED)]
    try:
        peak = baseline

        def all_dropped() -> bool:
            nonlocal peak
            peak = max(peak, rss_mib(pid))
            return drops(server) - dropped_before >= STALLED

        wait_for(all_dropped, f"the server drops {STALLED} clients that read nothing")
        wait_for(lambda: open_sockets(pid) <= idle_sockets, "their sockets are closed")
        assert all(closed_by_server(sock) for sock in clients)
    finally:
        for sock in clients:
            sock.close()
    # The stall really held memory (a few MiB per client), or this test proves nothing.
    assert peak - baseline > STALLED, (baseline, peak)

    margin = max(24.0, (peak - baseline) / 4)
    wait_for(lambda: rss_mib(pid) <= baseline + margin, "RSS returns near its baseline")
    assert "Traceback" not in (server.log_path or Path()).read_text()


def test_memory_returns_after_clients_go_away(server: LiveServer, merged_path: str) -> None:
    assert server.process is not None
    pid = server.process.pid
    time.sleep(6)
    baseline = rss_mib(pid)
    clients = [stalled(server, merged_path, auth(server)) for _ in range(STALLED)]
    try:
        # The merges under way cost memory (how soon they start depends on the machine's load).
        wait_for(lambda: rss_mib(pid) - baseline > STALLED / 2, "the clients cost memory")
        peak = rss_mib(pid)
    finally:
        for sock in clients:  # gone (if before the send timeout, the server sees them leave)
            sock.close()
    margin = max(24.0, (peak - baseline) / 4)
    wait_for(lambda: rss_mib(pid) <= baseline + margin, "RSS returns near its baseline")


def test_a_stalled_file_download_is_dropped(server: LiveServer, merged_path: str) -> None:
    # Signed file URLs are sent with sendfile: the watch cancels it and resets the client.
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    url = api.download_urls("big-base")["filenameToSignedUrls"]["model.safetensors"]
    api.close()
    dropped_before = drops(server)
    began = time.monotonic()
    with stalled(server, url.removeprefix(server.base_url)) as sock:
        wait_for(lambda: drops(server) > dropped_before, "the server drops the client")
        assert time.monotonic() - began >= TIMEOUT_S
        assert closed_by_server(sock)
    # The server is fine afterwards: the same URL downloads in full.
    assert len(httpx.get(url, timeout=GUARD_S).content) > 60 << 20


def test_a_slow_reader_is_never_cut(server: LiveServer, merged_path: str) -> None:
    # 128 KiB every half second, for four send timeouts: slow, but never idle that long.
    with connect(server.port) as sock:
        sock.sendall(request_head("GET", merged_path, auth(server)))
        received = 0
        stop = time.monotonic() + 4 * TIMEOUT_S
        while time.monotonic() < stop:
            chunk = sock.recv(128 << 10)
            assert chunk, f"cut after {received} bytes"
            received += len(chunk)
            time.sleep(0.5)
        assert received > 1 << 20


def test_trickled_request_heads_are_closed(server: LiveServer) -> None:
    pid = server.process.pid if server.process else 0
    idle_sockets = open_sockets(pid)
    trickling = []
    for _ in range(20):
        sock = connect(server.port)
        sock.sendall(b"GET /v3/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        trickling.append(sock)
    deadline = time.monotonic() + GUARD_S
    alive = list(trickling)
    while alive and time.monotonic() < deadline:
        for sock in list(alive):
            try:
                sock.sendall(b"X-Slow: 1\r\n")  # one header line at a time, never the end
            except OSError:
                alive.remove(sock)
        # Meanwhile everyone else is served as usual.
        assert httpx.get(f"{server.base_url}/v3/whoami", headers=auth(server)).status_code == 200
        time.sleep(0.5)
    assert alive == [], f"{len(alive)} trickling connections still open after {GUARD_S:g} s"
    for sock in trickling:
        sock.close()
    wait_for(lambda: open_sockets(pid) <= idle_sockets, "trickling sockets closed")


def test_stalled_upload_body_is_answered_408(server: LiveServer) -> None:
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    assert api.create("stalled-upload", kind="CUSTOM_MODEL").status_code == 200
    url = api.upload_urls("stalled-upload", {"w.bin": 1 << 20})["w.bin"]
    api.close()
    path = url.removeprefix(server.base_url)
    with connect(server.port) as sock:
        head = request_head("PUT", path, {"Content-Length": str(1 << 20)})
        sock.sendall(head + os.urandom(1000))  # then nothing more
        answer = ResponseReader(sock).response()
    assert answer.status == 408
    assert answer.json()["code"] == 4  # DEADLINE_EXCEEDED
    assert "body_timeout" in answer.json()["message"]
    tmp = server.data_dir / "store" / "tmp"
    wait_for(lambda: not any(tmp.iterdir()), "the partial upload's temp file is removed")


def test_stalled_json_body_is_answered_408_in_the_callers_envelope(server: LiveServer) -> None:
    with connect(server.port) as sock:
        head = request_head(
            "POST",
            "/weightport/v1/fine-tunes",
            {**auth(server), "Content-Type": "application/json", "Content-Length": "100"},
        )
        sock.sendall(head + b'{"base_model": ')
        answer = ResponseReader(sock).response()
    assert answer.status == 408
    error = answer.json()["error"]
    assert error["code"] == "request_timeout" and "body_timeout" in error["message"]


def test_stalled_form_body_is_answered_408(server: LiveServer) -> None:
    # The console's forms: read up front, so no handler waits on a stalled client.
    with connect(server.port) as sock:
        head = request_head(
            "POST",
            "/console/sign-in",
            {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": "100"},
        )
        sock.sendall(head + b"key=wp_")
        answer = ResponseReader(sock).response()
    assert answer.status == 408
    assert "body_timeout" in answer.json()["message"]
