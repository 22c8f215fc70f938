"""SIGTERM stops a server gracefully: it stops accepting at once, lets the downloads in flight
finish within ``shutdown_grace``, cuts the ones that would take longer, and exits.

The slow downloads are real: a client reading through a throttled TCP proxy, so the server's
socket buffers fill and its ``sendfile`` waits for the client, as with a slow link.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.observability_helpers import access_lines, json_access_env
from tests.tcp_proxy import TcpProxy
from weightport.server.byteserve import SENDFILE_PIECE

#: Guards against a server that never exits; the tests never rely on it firing.
HANG_GUARD_S = 120


@dataclass
class SlowDownload:
    """A GET read in a thread; ``received`` grows as bytes arrive."""

    url: str
    received: int = 0
    error: BaseException | None = None
    body: bytearray = field(default_factory=bytearray)
    done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> SlowDownload:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=HANG_GUARD_S) as response:
                assert response.status_code == 200
                for chunk in response.iter_raw():
                    self.body += chunk
                    self.received += len(chunk)
        except BaseException as exc:  # reported to the test thread
            self.error = exc
        finally:
            self.done.set()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + HANG_GUARD_S
        while self.received < count and not self.done.is_set():
            assert time.monotonic() < deadline, "the download does not progress"
            time.sleep(0.02)


def refuses_connections(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def publish_large(server: LiveServer, size: int) -> tuple[bytes, str]:
    account = f"stop-{secrets.token_hex(3)}"
    api = FireworksApi(server.base_url, account, server.new_account(account))
    data = os.urandom(size)
    url = api.publish("big", {"config.json": b"{}", "weights.bin": data})["weights.bin"]
    api.close()
    return data, url


def start_with_grace(
    server_factory: Callable[..., LiveServer], tmp_path: Path, grace: int
) -> tuple[LiveServer, Path]:
    """A server with this ``shutdown_grace`` writing JSON access lines; and their file."""
    access = tmp_path / "access.log"
    env = json_access_env(access, WEIGHTPORT_SHUTDOWN_GRACE=str(grace))
    return server_factory(tmp_path / "data", demo=False, extra_env=env).start(), access


def stop_and_wait(server: LiveServer) -> int:
    assert server.process is not None
    server.process.send_signal(signal.SIGTERM)
    return server.process.wait(timeout=HANG_GUARD_S)


def test_a_download_in_flight_finishes(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server, access = start_with_grace(server_factory, tmp_path, 60)
    data, url = publish_large(server, 48 << 20)
    with TcpProxy(server.port, rate=8 << 20).running() as proxy:
        download = SlowDownload(url.replace(server.base_url, proxy.base_url)).start()
        download.wait_for(4 << 20)
        assert server.process is not None
        server.process.send_signal(signal.SIGTERM)
        # New connections are refused at once, while the download goes on.
        deadline = time.monotonic() + HANG_GUARD_S
        while not refuses_connections(server.port):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert not download.done.is_set(), "the download ended before the check"
        assert server.process.wait(timeout=HANG_GUARD_S) == 0
        assert download.done.wait(HANG_GUARD_S)
    assert download.error is None, download.error
    assert bytes(download.body) == data
    log = (server.log_path or Path()).read_text()
    assert "stopping: no new connections; 1 download(s) in flight get up to 60 s" in log
    assert "stopped: no download was cut short" in log and "Traceback" not in log
    (line,) = [x for x in access_lines(access) if x["bytes"] == len(data)]
    assert line["status"] == 200 and "incomplete" not in line
    server.process = None


def test_a_download_past_the_grace_is_cut(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server, access = start_with_grace(server_factory, tmp_path, 1)
    data, url = publish_large(server, 160 << 20)
    with TcpProxy(server.port, rate=8 << 20).running() as proxy:
        download = SlowDownload(url.replace(server.base_url, proxy.base_url)).start()
        download.wait_for(SENDFILE_PIECE + (4 << 20))
        # At 8 MiB/s the rest would take many seconds; the grace is one second.
        assert stop_and_wait(server) == 0
        assert not download.done.is_set() or download.received < len(data)
        assert download.done.wait(HANG_GUARD_S)
    assert isinstance(download.error, httpx.RemoteProtocolError)  # closed short of its length
    assert 0 < download.received < len(data)
    assert bytes(download.body) == data[: download.received]
    log = (server.log_path or Path()).read_text()
    assert "1 download(s) in flight get up to 1 s" in log
    assert "stopped: 1 download(s) cut short while stopping" in log
    (line,) = [x for x in access_lines(access) if x.get("incomplete")]
    assert line["route"] == "/files/{account}/{model}/{path}"
    # What was sent is counted piece by piece: a cancelled piece is not (see SENDFILE_PIECE).
    assert SENDFILE_PIECE <= line["bytes"] < len(data) and line["bytes"] % SENDFILE_PIECE == 0
    server.process = None


@pytest.mark.parametrize("grace", ["-1", "soon"])
def test_a_bad_grace_is_refused(
    server_factory: Callable[..., LiveServer], tmp_path: Path, grace: str
) -> None:
    server = server_factory(
        tmp_path / "data", demo=False, extra_env={"WEIGHTPORT_SHUTDOWN_GRACE": grace}
    )
    with pytest.raises(RuntimeError, match="shutdown_grace"):
        server.start()
