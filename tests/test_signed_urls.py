"""Signed URLs over the wire: Range/resume on the blob route, tampering, expiry."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi

DATA = secrets.token_bytes(2 * 1024 * 1024 + 333)
CONFIG = b'{"model_type": "llama"}'


@pytest.fixture(scope="module")
def published(live_server: LiveServer) -> Iterator[tuple[FireworksApi, dict[str, str]]]:
    account = f"sig-{secrets.token_hex(3)}"
    api = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    urls = api.publish("weights", {"model.safetensors": DATA, "config.json": CONFIG})
    yield api, urls
    api.close()


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_full_get_head_and_etag(published: tuple[FireworksApi, dict[str, str]]) -> None:
    url = published[1]["model.safetensors"]
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["etag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in response.headers
    head = httpx.head(url)
    assert head.status_code == 200
    assert head.content == b""
    assert head.headers["content-length"] == str(len(DATA))


def test_ranges(published: tuple[FireworksApi, dict[str, str]]) -> None:
    url = published[1]["model.safetensors"]
    size = len(DATA)
    for header, start, end in [
        ("bytes=0-1", 0, 2),
        ("bytes=100-", 100, size),
        ("bytes=-500", size - 500, size),
        (f"bytes=-{size + 10}", 0, size),
        (f"bytes=5-{size + 100}", 5, size),
    ]:
        response = httpx.get(url, headers={"Range": header})
        assert response.status_code == 206, header
        assert response.content == DATA[start:end], header
        assert response.headers["content-range"] == f"bytes {start}-{end - 1}/{size}"
    unsatisfiable = httpx.get(url, headers={"Range": f"bytes={size}-"})
    assert unsatisfiable.status_code == 416
    assert unsatisfiable.headers["content-range"] == f"bytes */{size}"
    multi = httpx.get(url, headers={"Range": "bytes=0-9,20-29"})
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges; boundary=")
    assert DATA[0:10] in multi.content and DATA[20:30] in multi.content
    assert b"\r\nContent-Range: bytes 20-29/" in multi.content


def test_conditional_requests(published: tuple[FireworksApi, dict[str, str]]) -> None:
    url = published[1]["model.safetensors"]
    etag = httpx.head(url).headers["etag"]
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    same = httpx.get(url, headers={"Range": "bytes=0-3", "If-Range": etag})
    assert same.status_code == 206
    changed = httpx.get(url, headers={"Range": "bytes=0-3", "If-Range": '"other"'})
    assert changed.status_code == 200
    assert changed.content == DATA


def test_curl_resume(published: tuple[FireworksApi, dict[str, str]], tmp_path: Path) -> None:
    url = published[1]["model.safetensors"]
    target = tmp_path / "partial.bin"
    target.write_bytes(DATA[:123_457])
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(target), url], check=True)
    assert target.read_bytes() == DATA


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda u: u.replace("/model.safetensors?", "/config.json?"), id="path"),
        pytest.param(lambda u: with_query(u, **{"X-Goog-Expires": "999999"}), id="expiry"),
        pytest.param(lambda u: with_query(u, **{"X-Goog-Date": "20991231T000000Z"}), id="date"),
        pytest.param(lambda u: with_query(u, **{"X-Goog-Credential": "other"}), id="key-id"),
        pytest.param(lambda u: with_query(u, **{"X-Goog-Signature": "0" * 64}), id="signature"),
        pytest.param(lambda u: with_query(u, **{"X-Wp-sha256": "0" * 64}), id="bound-digest"),
        pytest.param(lambda u: u.split("?")[0], id="unsigned"),
    ],
)
def test_tampered_urls_are_403(
    published: tuple[FireworksApi, dict[str, str]], tamper: object
) -> None:
    url = published[1]["model.safetensors"]
    assert callable(tamper)
    response = httpx.get(tamper(url))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == 7 and body["details"] == []


def test_download_url_does_not_allow_put(published: tuple[FireworksApi, dict[str, str]]) -> None:
    url = published[1]["config.json"]
    assert httpx.put(url, content=CONFIG).status_code == 403


def test_expired_url_is_403(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(
        tmp_path / "data", extra_env={"WEIGHTPORT_DOWNLOAD_URL_TTL": "1"}
    ).start()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    url = api.download_urls("demo-llama")["filenameToSignedUrls"]["config.json"]
    assert httpx.get(url).status_code == 200
    time.sleep(2.2)
    expired = httpx.get(url)
    assert expired.status_code == 403
    assert "expired" in expired.json()["message"]
    api.close()


def test_names_that_need_escaping_get_working_urls(live_server: LiveServer) -> None:
    account = f"esc-{secrets.token_hex(3)}"
    api = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    files = {
        "config.json": CONFIG,
        "plain-0.bin": b"plain",
        "with space/and%percent#hash?.bin": b"escaped",
        "ünïcödé/日本.bin": b"unicode",
    }
    try:
        urls = api.publish("escapes", files)
        # A listing of only safe names takes the other path: both must give working URLs.
        safe = api.publish("plain", {"config.json": CONFIG, "plain-0.bin": b"plain"})
    finally:
        api.close()
    assert set(urls) == set(files)
    for name, url in [*urls.items(), *safe.items()]:
        response = httpx.get(url)
        assert response.status_code == 200, (name, response.text)
        assert response.content == files[name]
    assert "with%20space/and%25percent%23hash%3F.bin?" in urls["with space/and%percent#hash?.bin"]
    assert "/plain-0.bin?" in urls["plain-0.bin"] and "/plain-0.bin?" in safe["plain-0.bin"]
