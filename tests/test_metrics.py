"""/metrics after real traffic: every counter moved by exactly what was sent and refused,
the gauges are back at rest, and only the admin account (or the metrics port) may read it."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote, urlencode

import httpx
import pytest

from tests.archive_helpers import wait_for_build
from tests.conftest import LiveServer, fill, free_port
from tests.fw_helpers import FireworksApi
from tests.observability_helpers import moved, scrape, value
from weightport.catalog import accounts
from weightport.signing import UrlSigner, parse_signing_keys

FILE_ROUTE = "/files/{account}/{model}/{path}"
ARCHIVE_ROUTE = "/v1/finetune/download"
BYTE_PATHS = ("file", "stored_archive", "compressed_archive", "merged", "hub")


def expired_url(
    server: LiveServer, account: str, model: str, path: str, bound: dict[str, str]
) -> str:
    """A URL signed with the server's own key, authentic but past its expiry."""
    keys = parse_signing_keys((server.data_dir / "signing-keys").read_text().strip())
    signed_at = int(time.time()) - 7200
    decoded = f"/files/{account}/{model}/{path}"
    query = UrlSigner(keys).sign(
        "GET", decoded, expires_at=signed_at + 60, now=signed_at, bound=bound
    )
    return (
        f"{server.base_url}/files/{quote(account)}/{quote(model)}/{quote(path)}?{urlencode(query)}"
    )


def test_counters_move_by_exactly_the_traffic(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "data", extra_env={"WEIGHTPORT_REVOCATION_DELAY": "0"}
    ).start()
    metrics_url = f"{server.base_url}/metrics"
    account = f"met-{secrets.token_hex(3)}"
    key = server.new_account(account)
    api = FireworksApi(server.base_url, account, key)
    weights = os.urandom(5 << 20)
    urls = api.publish("m", {"config.json": b"{}", "weights.bin": weights})
    catalog = server.catalog()
    second_key = catalog.call(lambda s: accounts.create_key(s, account).secret)
    second = FireworksApi(server.base_url, account, second_key)
    doomed_url = second.download_urls("m")["filenameToSignedUrls"]["weights.bin"]
    second.close()
    catalog.call(lambda s: accounts.revoke_key(s, second_key.split("_")[1]))
    catalog.close()
    admin = httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=120,
    )
    ft_id = admin.get("/v1/fine-tunes").json()["data"][0]["id"]

    before = scrape(metrics_url, server.admin_key)

    # The signed file route: a whole GET, a range, a HEAD, a 304 and three refusals.
    whole = httpx.get(urls["weights.bin"])
    assert whole.status_code == 200 and whole.content == weights
    assert httpx.get(urls["weights.bin"], headers={"Range": "bytes=100-199"}).status_code == 206
    assert httpx.head(urls["weights.bin"]).status_code == 200
    etag = whole.headers["etag"]
    assert httpx.get(urls["weights.bin"], headers={"If-None-Match": etag}).status_code == 304
    tampered = urls["weights.bin"].replace("X-Goog-Signature=", "X-Goog-Signature=f")
    assert httpx.get(tampered).status_code == 403
    sha = etag.strip('"')
    key_id = key.split("_")[1]
    stale = expired_url(server, account, "m", "weights.bin", {"sha256": sha, "key": key_id})
    assert httpx.get(stale).json()["message"].startswith("signed URL expired")
    assert httpx.get(doomed_url).status_code == 403
    # Archives: the adapter stored, the merged view, then the adapter's compressed build.
    adapter_url = f"/v1/finetune/download?ft_id={ft_id}&checkpoint=adapter"
    stored = admin.get(adapter_url)
    merged = admin.get(f"/v1/finetune/download?ft_id={ft_id}&checkpoint=merged")
    assert stored.status_code == merged.status_code == 200
    queued = admin.post(
        f"/weightport/v1/fine-tunes/{ft_id}/archives", json={"checkpoint": "adapter"}
    )
    assert queued.status_code == 202
    assert wait_for_build(admin, ft_id, "adapter")["state"] == "ready"
    compressed = admin.get(adapter_url)
    assert compressed.status_code == 200 and compressed.headers["etag"] != stored.headers["etag"]
    # The Hugging Face route: a stored file.
    hub = admin.get("/hf/admin/demo-llama/resolve/main/config.json")
    assert hub.status_code == 200

    after = scrape(metrics_url, server.admin_key)
    admin.close()
    api.close()

    def requests(method: str, route: str, status: int) -> float:
        labels = {"method": method, "route": route, "status": str(status)}
        return moved(before, after, "weightport_http_requests_total", **labels)

    assert requests("GET", FILE_ROUTE, 200) == 1
    assert requests("GET", FILE_ROUTE, 206) == 1
    assert requests("HEAD", FILE_ROUTE, 200) == 1
    assert requests("GET", FILE_ROUTE, 304) == 1
    assert requests("GET", FILE_ROUTE, 403) == 3
    assert requests("GET", ARCHIVE_ROUTE, 200) == 3
    assert requests("POST", "/weightport/v1/fine-tunes/{ft_id}/archives", 202) == 1
    assert requests("GET", "/metrics", 200) == 1  # the first scrape, counted once it was sent
    latency = "weightport_http_request_duration_seconds_count"
    assert moved(before, after, latency, method="GET", route=FILE_ROUTE) == 6

    def served(path: str) -> float:
        return moved(before, after, "weightport_bytes_served_total", path=path)

    assert served("file") == len(weights) + 100
    assert served("stored_archive") == len(stored.content)
    assert served("merged") == len(merged.content)
    assert served("compressed_archive") == len(compressed.content)
    assert served("hub") == len(hub.content)
    hub_route = "/hf/{namespace}/{name}/resolve/{rest}"
    assert requests("GET", hub_route, 200) == 1
    for path in BYTE_PATHS:
        assert value(after, "weightport_active_downloads", path=path) == 0

    def refused(reason: str) -> float:
        return moved(before, after, "weightport_signed_url_failures_total", reason=reason)

    assert refused("signature_invalid") == 1
    assert refused("signature_expired") == 1
    assert refused("signature_revoked") == 1

    # The merge ran for the merged download: bytes out and time spent, both moved.
    assert moved(before, after, "weightport_merge_output_bytes_total") > 0
    assert moved(before, after, "weightport_merge_seconds_total") > 0
    # The build: finished once, its duration observed once, and the catalog's view of it.
    assert moved(before, after, "weightport_archive_builds_finished_total", outcome="ready") == 1
    assert moved(before, after, "weightport_archive_build_duration_seconds_count") == 1
    assert moved(before, after, "weightport_archive_builds", state="ready") == 1
    assert value(after, "weightport_archive_builds", state="building") == 0
    assert (
        moved(before, after, "weightport_errors_total", source="store", code="storage_error") == 0
    )


def test_metrics_need_an_admin_key(live_server: LiveServer) -> None:
    url = f"{live_server.base_url}/metrics"
    anonymous = httpx.get(url)
    assert anonymous.status_code == 401 and anonymous.json()["code"] == 16
    other = live_server.new_account(f"nosy-{secrets.token_hex(3)}")
    refused = httpx.get(url, headers={"Authorization": f"Bearer {other}"})
    assert refused.status_code == 403
    assert "admin" in refused.json()["message"] and "weightport_" not in refused.text
    assert (
        value(scrape(url, live_server.admin_key), "weightport_active_downloads", path="file") == 0
    )


def test_every_fireworks_verb_has_its_own_route_label(live_server: LiveServer) -> None:
    # Unknown verbs fold into one label; a real one (":import" was missed once) keeps its own.
    url = f"{live_server.base_url}/metrics"
    api = FireworksApi(live_server.base_url, "admin", live_server.admin_key)
    before = scrape(url, live_server.admin_key)
    assert api.http.post(f"{api.base}/demo-llama:import", json={}).status_code == 400
    assert api.http.post(f"{api.base}/demo-llama:nonsense", json={}).status_code == 404
    api.close()
    after = scrape(url, live_server.admin_key)
    route = "/v1/accounts/{account}/models/{model}"
    counter = "weightport_http_requests_total"
    assert moved(before, after, counter, method="POST", route=route + ":import", status="400") == 1
    assert moved(before, after, counter, method="POST", route=route + ":{verb}", status="404") == 1


def test_metrics_on_their_own_port(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    port = free_port()
    server = server_factory(
        tmp_path / "data",
        demo=False,
        extra_env={"WEIGHTPORT_METRICS_LISTEN": f"127.0.0.1:{port}"},
    ).start()
    # Not on the main port, even for the admin.
    main = httpx.get(
        f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {server.admin_key}"}
    )
    assert main.status_code == 404
    before = scrape(f"http://127.0.0.1:{port}/metrics")
    assert httpx.get(f"{server.base_url}/v1/whoami").status_code == 401
    after = scrape(f"http://127.0.0.1:{port}/metrics")
    labels = {"method": "GET", "route": "/v1/whoami", "status": "401"}
    assert moved(before, after, "weightport_http_requests_total", **labels) == 1


def test_metrics_off(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    server = server_factory(
        tmp_path / "data", demo=False, extra_env={"WEIGHTPORT_METRICS": "false"}
    ).start()
    response = httpx.get(
        f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {server.admin_key}"}
    )
    assert response.status_code == 404


def test_a_metrics_port_in_use_is_one_line(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    taken = f"127.0.0.1:{server.port}"
    other = server_factory(
        tmp_path / "other", demo=False, extra_env={"WEIGHTPORT_METRICS_LISTEN": taken}
    )
    with pytest.raises(RuntimeError, match="server exited early") as failed:
        other.start()
    assert f"Error: cannot listen on {taken}: address already in use" in str(failed.value)
    assert "metrics_listen" in str(failed.value) and "Traceback" not in str(failed.value)


def test_catalog_and_store_errors_are_counted_apart(
    server_factory: Callable[..., LiveServer], small_disk: Path
) -> None:
    # The audit log off: its writes would meet the full disk too, once a second.
    server = server_factory(small_disk, demo=False, extra_env={"WEIGHTPORT_AUDIT_LOG": "false"})
    server.start()
    try:
        account = f"full-{secrets.token_hex(3)}"
        api = FireworksApi(server.base_url, account, server.new_account(account))
        assert api.create("victim", kind="CUSTOM_MODEL").status_code == 200
        upload = api.upload_urls("victim", {"w.bin": 4 << 20})["w.bin"]
        before = scrape(f"{server.base_url}/metrics", server.admin_key)
        filler = fill(small_disk)
        assert httpx.put(upload, content=os.urandom(4 << 20)).status_code == 507
        # Creates until the catalog meets the full disk (SQLite may first use pages it has).
        for attempt in range(500):
            status = api.create(f"new-{attempt}").status_code
            if status != 200:
                break
        assert status == 507
        filler.unlink()
        after = scrape(f"{server.base_url}/metrics", server.admin_key)
        api.close()
    finally:
        server.stop()  # before the disk is unmounted

    def errors(source: str) -> float:
        labels = {"source": source, "code": "insufficient_storage"}
        return moved(before, after, "weightport_errors_total", **labels)

    assert errors("store") == 1
    assert errors("catalog") == 1


def test_processes_sharing_a_metrics_directory_report_one_set_of_counters(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    # How the workers of one server report (prometheus-client's multiprocess mode): each
    # writes into the shared directory, and a scrape answered by any of them sums them all.
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    first = server_factory(tmp_path / "first", demo=False, extra_env=env).start()
    second = server_factory(tmp_path / "second", demo=False, extra_env=env).start()
    metrics_url = f"{first.base_url}/metrics"
    labels = {"method": "GET", "route": "/v1/whoami", "status": "401"}
    before = scrape(metrics_url, first.admin_key)
    for _ in range(2):
        assert httpx.get(f"{first.base_url}/v1/whoami").status_code == 401
    for _ in range(3):
        assert httpx.get(f"{second.base_url}/v1/whoami").status_code == 401
    after = scrape(metrics_url, first.admin_key)
    assert moved(before, after, "weightport_http_requests_total", **labels) == 5
    # The other process answers with the same totals; once it has stopped, its counts stay.
    from_second = scrape(f"{second.base_url}/metrics", second.admin_key)
    assert moved(before, from_second, "weightport_http_requests_total", **labels) == 5
    second.stop()
    final = scrape(metrics_url, first.admin_key)
    assert moved(before, final, "weightport_http_requests_total", **labels) == 5
    assert value(final, "weightport_active_downloads", path="file") == 0
