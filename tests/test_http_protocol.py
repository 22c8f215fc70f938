"""HTTP/1.x at the edge, over raw sockets: malformed requests log one line (no traceback),
other HTTP versions get 505 in an HTTP/1.1 status line, and uploads send ``100 Continue``
only after their signature and size checks pass."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.raw_http import ResponseReader, connect, exchange, request_head

MALFORMED = [
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Name: 1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
]


def test_malformed_requests_log_one_line_each(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    for raw in MALFORMED:
        response = exchange(server.port, [raw])
        assert response.status == 400, raw
    server.stop()
    assert server.log_path is not None
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert "ERROR" not in log
    # aiohttp itself logs a bad method on a connection's first request at DEBUG ("GARBAGE").
    logged = log.count("INFO aiohttp.server malformed request from 127.0.0.1")
    assert logged == len(MALFORMED) - 1


@pytest.mark.parametrize("version", ["HTTP/2.0", "HTTP/0.9"])
def test_other_http_versions_get_505_as_http_1_1(live_server: LiveServer, version: str) -> None:
    head = request_head("GET", "/v1/accounts/admin/models", version=version)
    response = exchange(live_server.port, [head])
    assert response.status_line.startswith("HTTP/1.1 505 ")
    assert response.headers["connection"].lower() == "close"
    body = response.json()
    assert body["code"] == 12 and version in body["message"]


def test_http_1_0_is_still_served(live_server: LiveServer) -> None:
    head = request_head("GET", "/v1/accounts/admin/models", version="HTTP/1.0")
    response = exchange(live_server.port, [head])
    assert response.status_line.startswith("HTTP/1.0 401 ")


@pytest.fixture(scope="module")
def upload_url(live_server: LiveServer) -> str:
    account = f"expect-{secrets.token_hex(3)}"
    api = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    assert api.create("m", kind="CUSTOM_MODEL").status_code == 200
    url = api.upload_urls("m", {"w.bin": 10})["w.bin"]
    api.close()
    return url


def _put_head(url: str, length: int, expect: str = "100-continue") -> bytes:
    parts = urlsplit(url)
    return request_head(
        "PUT",
        f"{parts.path}?{parts.query}",
        {"Content-Length": str(length), "Expect": expect},
    )


def _answer_without_body(port: int, head: bytes) -> tuple[list[str], int, dict[str, object]]:
    """Send only the head of a PUT and read the answer; the body is never sent."""
    with connect(port) as sock:
        sock.sendall(head)
        response = ResponseReader(sock).response()
    return response.interim, response.status, response.json()


@pytest.mark.parametrize(
    ("mangle", "length", "status"),
    [
        (lambda url: url.replace("X-Goog-Signature=", "X-Goog-Signature=0"), 10, 403),
        (lambda url: url.replace("X-Wp-size=10", "X-Wp-size=11"), 11, 403),
        (lambda url: url, 11, 400),
    ],
    ids=["bad-signature", "tampered-size", "wrong-length"],
)
def test_refused_upload_gets_no_100_continue(
    live_server: LiveServer,
    upload_url: str,
    mangle: Callable[[str], str],
    length: int,
    status: int,
) -> None:
    interim, got, body = _answer_without_body(
        live_server.port, _put_head(mangle(upload_url), length)
    )
    assert interim == []
    assert got == status, body
    assert set(body) == {"code", "message", "details"}


def test_unknown_expectation_is_417(live_server: LiveServer, upload_url: str) -> None:
    head = _put_head(upload_url, 10, expect="something-else")
    interim, status, body = _answer_without_body(live_server.port, head)
    assert (interim, status) == ([], 417)
    assert "something-else" in str(body["message"])


def test_accepted_upload_gets_100_continue_then_200(
    live_server: LiveServer, upload_url: str
) -> None:
    with connect(live_server.port) as sock:
        sock.sendall(_put_head(upload_url, 10))
        reader = ResponseReader(sock)
        status_line, _ = reader.next_head()
        assert status_line == "HTTP/1.1 100 Continue"
        sock.sendall(b"0123456789")
        response = reader.response()
    assert response.status == 200, response.body
    # A client that does not ask for 100 Continue is not sent one.
    again = httpx.put(upload_url, content=b"0123456789")
    assert again.status_code == 200
