"""A server killed mid-upload leaves no READY model and no visible partial blob; the upload
can then be retried and completes."""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi

SIZE = 48 * 1024 * 1024


def blob_files(data_dir: Path) -> set[str]:
    return {p.name for p in (data_dir / "store" / "blobs").rglob("*") if p.is_file()}


def test_kill_mid_upload_then_retry(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    assert api.create("crashy").status_code == 200
    data = secrets.token_bytes(SIZE)
    url = api.upload_urls("crashy", {"weights.bin": SIZE, "config.json": 2})["weights.bin"]
    sent = threading.Event()

    def slow_body() -> Iterator[bytes]:
        for offset in range(0, SIZE, 1 << 20):
            if offset >= 8 << 20:
                sent.set()
                time.sleep(0.05)
            yield data[offset : offset + (1 << 20)]

    def put() -> None:
        # The server dies under us: that is the point.
        with contextlib.suppress(httpx.HTTPError):
            httpx.put(url, content=slow_body(), headers={"Content-Length": str(SIZE)}, timeout=60)

    before = blob_files(server.data_dir)
    uploader = threading.Thread(target=put)
    uploader.start()
    assert sent.wait(30)
    server.kill()
    uploader.join(60)
    # Bytes that reached the server are in a temp file at most, never under a blob key.
    assert blob_files(server.data_dir) == before
    assert hashlib.sha256(data).hexdigest() not in blob_files(server.data_dir)

    server.start()
    api.close()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    model = api.http.get(f"{api.base}/crashy").json()
    assert model["state"] == "UPLOADING"
    refused = api.validate("crashy")
    assert refused.status_code == 400 and "weights.bin" in refused.json()["message"]
    assert not any((server.data_dir / "store" / "tmp").iterdir())  # cleaned at start

    urls = api.upload_urls("crashy", {"weights.bin": SIZE, "config.json": 2})
    assert httpx.put(urls["weights.bin"], content=data, timeout=60).status_code == 200
    assert httpx.put(urls["config.json"], content=b"{}").status_code == 200
    assert api.validate("crashy").status_code == 200
    signed = api.download_urls("crashy")
    assert signed["filenameToSha256"]["weights.bin"] == hashlib.sha256(data).hexdigest()
    assert httpx.get(signed["filenameToSignedUrls"]["weights.bin"], timeout=60).content == data
    api.close()
