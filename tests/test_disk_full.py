"""A full disk under the data directory, for real (a 64 MiB tmpfs): writes answer 507 in the
caller's envelope with one log line, nothing is half-written, reads keep working, and once
space is freed everything works again."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, fill
from tests.disk_helpers import assert_insufficient_storage
from tests.fw_helpers import FireworksApi

#: Creates tried until the catalog meets the full disk (SQLite may first fill WAL space it
#: already owns); a handful is typical, the bound only stops a broken server from looping.
MAX_CATALOG_WRITES = 500


def test_full_disk(server_factory: Callable[..., LiveServer], small_disk: Path) -> None:
    server = server_factory(small_disk, demo=False).start()
    try:
        account = f"full-{secrets.token_hex(3)}"
        api = FireworksApi(server.base_url, account, server.new_account(account))
        kept = {"config.json": b"{}", "w.bin": os.urandom(1 << 20)}
        downloads = api.publish("kept", kept)
        assert api.create("victim", kind="CUSTOM_MODEL").status_code == 200
        upload_urls = api.upload_urls("victim", {"w.bin": 4 << 20})
        payload = os.urandom(4 << 20)

        filler = fill(small_disk)

        # A blob write: 507, and the temp file is gone.
        assert_insufficient_storage(httpx.put(upload_urls["w.bin"], content=payload))
        assert list((small_disk / "store" / "tmp").iterdir()) == []
        assert "not uploaded yet" in api.validate("victim").json()["message"]

        # Catalog writes: 507 once the database needs a page it does not have; nothing left
        # behind by the refused one.
        created: list[str] = []
        for attempt in range(MAX_CATALOG_WRITES):
            response = api.create(f"new-{attempt}")
            if response.status_code == 200:
                created.append(f"new-{attempt}")
                continue
            assert_insufficient_storage(response)
            assert api.http.get(f"{api.base}/new-{attempt}").status_code == 404
            break
        else:
            pytest.fail(f"{MAX_CATALOG_WRITES} creates on a full disk all succeeded")

        # Reads keep working: catalog reads, fresh signed URLs, and the bytes themselves.
        assert api.http.get(api.base).status_code == 200
        for path, url in api.download_urls("kept")["filenameToSignedUrls"].items():
            assert httpx.get(url).content == kept[path]
        assert httpx.get(downloads["w.bin"]).content == kept["w.bin"]

        filler.unlink()
        assert httpx.put(upload_urls["w.bin"], content=payload).status_code == 200
        assert api.validate("victim").status_code == 200
        assert api.create("after").status_code == 200
        api.close()
    finally:
        server.stop()
    assert server.log_path is not None
    log = server.log_path.read_text()
    assert "Traceback" not in log
    assert "507" in log and "disk is full" in log
