"""The console's audit page over plain HTTP: the admin sees who downloaded what, filters and
pages through it without JavaScript; other accounts are refused."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urljoin

import httpx

from tests.conftest import LiveServer
from tests.console_helpers import read_page, signed_in_client
from tests.fw_helpers import FireworksApi
from weightport.catalog import audit
from weightport.catalog.audit import Change, Requester, Subject
from weightport.services.audit import coalesce_key


def test_the_admin_sees_and_filters_downloads(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    account = f"seen-{secrets.token_hex(3)}"
    key = server.new_account(account)
    api = FireworksApi(server.base_url, account, key)
    urls = api.publish("watched", {"config.json": b"{}", "w.bin": os.urandom(3000)})
    api.close()
    assert httpx.get(urls["w.bin"], headers={"User-Agent": "audit-test/1"}).status_code == 200
    with signed_in_client(server.base_url, server.admin_key) as admin:
        deadline = time.monotonic() + 60  # the writer thread takes a batch a second
        while "w.bin" not in (page := admin.get("/console/audit")).text:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert page.status_code == 200 and 'aria-current="page">Audit' in page.text
        assert f"accounts/{account}/models/watched" in page.text
        assert "audit-test/1" in page.text and "3 kB" in page.text
        assert key.split("_")[1] in page.text and key not in page.text
        mine = admin.get("/console/audit", params={"account": account, "action": "download"})
        assert "w.bin" in mine.text and "signed URLs</span>" not in mine.text
        grants = admin.get("/console/audit", params={"account": account, "action": "urls"})
        assert "signed URLs</span>" in grants.text and "every file" in grants.text
        assert "w.bin" not in grants.text
        nobody = admin.get("/console/audit", params={"account": "nobody-here"})
        assert "No records match" in nobody.text
        assert admin.get("/console/audit", params={"action": "delete"}).status_code == 400
        assert admin.get("/console/audit", params={"before": "x"}).status_code == 400
    with signed_in_client(server.base_url, key) as other:
        refused = other.get("/console/audit")
        assert refused.status_code == 403 and "reads the audit log" in refused.text
        assert "/console/audit" not in other.get("/console/models").text  # no menu entry


def test_pages_go_back_in_time(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    now = datetime.now(UTC)
    requester = Requester("k", "10.0.0.9", "pager")
    changes = []
    for i in range(120):
        subject = Subject("paged", f"accounts/paged/models/m{i:03d}", "file", file="f.bin")
        at = now - timedelta(minutes=120 - i)
        key = coalesce_key(audit.DOWNLOAD, subject, requester)
        changes.append(Change(key, audit.DOWNLOAD, subject, requester, at, at, 1, 10, None))
    catalog = server.catalog()
    catalog.call(lambda s: audit.apply_changes(s, changes, timedelta(seconds=300)))
    catalog.close()
    seen: list[str] = []
    with signed_in_client(server.base_url, server.admin_key) as admin:
        path: str | None = "/console/audit?account=paged"
        while path is not None:
            page = admin.get(path)
            assert page.status_code == 200
            seen += page.text.split("accounts/paged/models/")[1:]
            older = [link for link in read_page(page.text).links if "before=" in link]
            path = urljoin("/console/audit", older[0]) if older else None
            # Every older page keeps the filter and offers the way back to the newest.
            assert path is None or "account=paged" in path
        assert "Newest" in page.text
        hour = admin.get("/console/audit", params={"account": "paged", "period": "1h"})
        assert hour.text.count("accounts/paged/models/") == 50  # the first page of 60
        assert "Older" in hour.text
    names = [s[:4] for s in seen]
    assert names == [f"m{i:03d}" for i in reversed(range(120))]
