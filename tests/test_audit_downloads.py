"""The audit log after real downloads: one record per download however many ranges it took
(weightport download with 16 connections), the API calls that handed out URLs, the console's
links; read back through `weightport audit`, the admin API route, and retention at work."""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from tests.cli_helpers import weightport
from tests.conftest import LiveServer
from tests.console_helpers import signed_in_client
from tests.fw_helpers import FireworksApi
from tests.observability_helpers import access_lines, json_access_env
from weightport.catalog import audit
from weightport.catalog.audit import Change, Requester, Subject
from weightport.services.audit import coalesce_key

PART = 256 << 10
FILE_ROUTE = "/files/{account}/{model}/{path}"


def audit_json(server: LiveServer, *args: str) -> list[dict[str, Any]]:
    result = weightport("audit", "--json", "--data-dir", str(server.data_dir), *args)
    records: list[dict[str, Any]] = json.loads(result.stdout)["auditRecords"]
    return records


def test_one_record_per_download(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    server = server_factory(tmp_path / "data", extra_env=json_access_env(access)).start()
    account = f"aud-{secrets.token_hex(3)}"
    key = server.new_account(account)
    key_id = key.split("_")[1]
    files = {"config.json": b'{"a": 1}', "weights.bin": os.urandom(6 << 20)}
    api = FireworksApi(server.base_url, account, key)
    api.publish("big", files)
    api.close()

    started = datetime.now(UTC)
    weightport(
        "download", "model", f"{account}/big", "-o", str(tmp_path / "big"),
        "--base-url", server.base_url, "--api-key", key,
        "--connections", "16", "--part-size", str(PART), "--quiet",
    )  # fmt: skip
    assert (tmp_path / "big" / "weights.bin").read_bytes() == files["weights.bin"]
    admin = server.admin_key
    ft_id = httpx.get(
        f"{server.base_url}/v1/fine-tunes", headers={"Authorization": f"Bearer {admin}"}
    ).json()["data"][0]["id"]
    weightport(
        "download", "finetune", ft_id, "-o", str(tmp_path / "merged.tar.zst"),
        "--base-url", server.base_url, "--api-key", admin, "--quiet",
    )  # fmt: skip
    hub = httpx.get(
        f"{server.base_url}/hf/admin/demo-llama/resolve/main/config.json",
        headers={"Authorization": f"Bearer {admin}"},
    )
    assert hub.status_code == 200
    with signed_in_client(server.base_url, key) as console:
        link = console.get("/console/models/big/files/config.json")
        assert link.status_code == 302
    server.stop()  # a graceful stop writes the last batch

    records = audit_json(server, "--account", account)
    downloads = {r["file"]: r for r in records if r["action"] == "download"}
    assert set(downloads) == set(files)  # one record per file, not one per range
    gets = [
        line
        for line in access_lines(access)
        if line["route"] == FILE_ROUTE and line["method"] == "GET" and line["account"] == account
    ]
    # Every range request of the download landed in its file's record, with its bytes.
    assert sum(r["requests"] for r in downloads.values()) == len(gets)
    assert sum(int(r["bytes"]) for r in downloads.values()) == sum(g["bytes"] for g in gets)
    weights = downloads["weights.bin"]
    assert weights["requests"] >= len(files["weights.bin"]) // PART  # 24 parts at least
    assert int(weights["bytes"]) >= len(files["weights.bin"])
    for record in downloads.values():
        assert record["resource"] == f"accounts/{account}/models/big"
        assert (record["kind"], record["revision"], record["keyId"]) == ("file", "", key_id)
        assert record["client"] == "127.0.0.1"
        assert record["userAgent"].startswith("python-urllib3")
        assert datetime.fromisoformat(record["firstTime"]) >= started - timedelta(seconds=1)
    grants = [r for r in records if r["action"] == "urls"]
    # The downloader's getDownloadEndpoint (whole model) and the console's file link.
    assert {(r["file"], r["userAgent"][:6]) for r in grants} == {
        ("", "python"),
        ("config.json", "python"),
    }
    admin_records = audit_json(server, "--account", "admin")
    (hub_record,) = [r for r in admin_records if r["resource"] == "admin/demo-llama"]
    assert (hub_record["revision"], hub_record["kind"], hub_record["file"]) == (
        "main",
        "file",
        "config.json",
    )
    assert int(hub_record["bytes"]) == len(hub.content)
    (merged,) = [r for r in admin_records if r["kind"] == "merged"]
    assert merged["resource"] == ft_id and merged["revision"].isdigit()
    assert merged["file"].endswith(".tar.zst")
    assert int(merged["bytes"]) >= (tmp_path / "merged.tar.zst").stat().st_size

    # The text form, and filters that match nothing.
    text = weightport("audit", "--data-dir", str(server.data_dir), "--account", account).stdout
    assert text.splitlines()[0].startswith("FIRST\tLAST\tACCOUNT\tKEY\tACTION\tWHAT")
    assert f"accounts/{account}/models/big weights.bin" in text
    assert audit_json(server, "--account", account, "--since", "2099-01-01") == []
    assert audit_json(server, "--account", account, "--until", "1d") == []
    assert len(audit_json(server, "--account", account, "--since", "1h")) == len(records)
    assert len(audit_json(server, "--key-id", key_id, "--action", "urls")) == 2
    bad = weightport("audit", "--data-dir", str(server.data_dir), "--since", "soon", check=False)
    assert bad.returncode == 2 and "--since must be a time" in bad.stderr


def test_audit_api_for_admins(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    account = f"api-{secrets.token_hex(3)}"
    key = server.new_account(account)
    api = FireworksApi(server.base_url, account, key)
    api.publish(
        "m", {"config.json": b"{}", **{f"f{i}.bin": os.urandom(1000 + i) for i in range(2)}}
    )
    for url in api.download_urls("m")["filenameToSignedUrls"].values():
        assert httpx.get(url).status_code == 200
    api.close()
    route = f"{server.base_url}/weightport/v1/audit"
    admin = {"Authorization": f"Bearer {server.admin_key}"}

    def listing(**params: str) -> dict[str, Any]:
        response = httpx.get(route, params=params, headers=admin)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    deadline = time.monotonic() + 60  # the writer thread takes a batch a second
    while listing(account=account)["totalSize"] < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    everything = listing(account=account)["auditRecords"]
    assert len(everything) == 4  # three files and one grant
    pages, token = [], ""
    while True:
        page = listing(account=account, pageSize="1", **({"pageToken": token} if token else {}))
        assert page["totalSize"] == 4
        pages += page["auditRecords"]
        token = page["nextPageToken"]
        if not token:
            break
    assert pages == everything
    assert [r["id"] for r in everything] == sorted((r["id"] for r in everything), key=int)[::-1]
    assert listing(account=account, action="download", since="1h")["totalSize"] == 3
    assert listing(account="nobody")["auditRecords"] == []

    refused = httpx.get(route, headers={"Authorization": f"Bearer {key}"})
    assert refused.status_code == 403
    assert set(refused.json()) == {"code", "message", "details"}
    assert httpx.get(route).status_code == 401
    for params, param in (({"since": "later"}, "since"), ({"pageSize": "0"}, "pageSize")):
        bad = httpx.get(route, params=params, headers=admin)
        assert bad.status_code == 400 and param in bad.json()["message"], bad.text
    assert httpx.get(route, params={"pageToken": "abc"}, headers=admin).status_code == 400


def test_retention_removes_old_records(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "data", demo=False, extra_env={"WEIGHTPORT_AUDIT_RETENTION_DAYS": "7"}
    ).start()
    server.stop()
    now = datetime.now(UTC)
    requester = Requester("k", "10.1.1.1", "old")

    def old(days: int) -> Change:
        subject = Subject("admin", f"accounts/admin/models/m{days}", "file")
        at = now - timedelta(days=days)
        key = coalesce_key(audit.DOWNLOAD, subject, requester)
        return Change(key, audit.DOWNLOAD, subject, requester, at, at, 1, 1, None)

    catalog = server.catalog()
    catalog.call(lambda s: audit.apply_changes(s, [old(30), old(8), old(2)], timedelta(300)))
    catalog.close()
    server.start()
    deadline = time.monotonic() + 60  # the writer applies retention right after starting
    while len(audit_json(server)) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    server.stop()
    assert [r["resource"] for r in audit_json(server)] == ["accounts/admin/models/m2"]
    assert "removed 2 records older than 7 days" in (server.log_path or Path()).read_text()


def test_audit_log_off(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(
        tmp_path / "data", demo=False, extra_env={"WEIGHTPORT_AUDIT_LOG": "off"}
    ).start()
    account = f"off-{secrets.token_hex(3)}"
    api = FireworksApi(server.base_url, account, server.new_account(account))
    for url in api.publish("m", {"config.json": b"{}"}).values():
        assert httpx.get(url).content == b"{}"
    api.close()
    server.stop()
    assert audit_json(server) == []
