"""The access log after real traffic: one parseable line per request, the route template
rather than the path, the right status and byte counts, who asked — and never a secret."""

from __future__ import annotations

import os
import secrets
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from tests.cli_helpers import weightport
from tests.conftest import LiveServer
from tests.console_helpers import SESSION_COOKIE, signed_in_client
from tests.fw_helpers import FireworksApi
from tests.observability_helpers import access_lines, json_access_env, parse_logfmt

FILE_ROUTE = "/files/{account}/{model}/{path}"
FIELDS = {
    "ts",
    "level",
    "method",
    "route",
    "status",
    "bytes",
    "duration_ms",
    "account",
    "key_id",
    "remote",
    "user_agent",
}


def test_json_access_log_after_real_traffic(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    access_file = tmp_path / "access.log"
    server = server_factory(tmp_path / "data", extra_env=json_access_env(access_file)).start()
    account = f"log-{secrets.token_hex(3)}"
    key = server.new_account(account)
    key_id = key.split("_")[1]
    api = FireworksApi(server.base_url, account, key)
    files = {"config.json": b'{"model_type": "llama"}', "weights.bin": os.urandom(3 << 20)}
    urls = api.publish("logged", files)
    signatures = [dict(parse_qsl(urlsplit(u).query))["X-Goog-Signature"] for u in urls.values()]

    # A ranged GET of a signed URL, a tampered one, an unknown route, a console session.
    ranged = httpx.get(urls["weights.bin"], headers={"Range": "bytes=10-1033"})
    assert ranged.status_code == 206 and len(ranged.content) == 1024
    tampered = urls["config.json"].replace("X-Goog-Signature=", "X-Goog-Signature=0")
    assert httpx.get(tampered).status_code == 403
    assert api.http.get(f"{server.base_url}/v1/no/such/{secrets.token_hex(4)}").status_code == 404
    with signed_in_client(server.base_url, key) as console:
        assert console.get("/console/models").status_code == 200
        session_token = console.cookies[SESSION_COOKIE]
    # weightport's own downloader: parallel ranges of every file.
    weightport(
        "download", "model", f"{account}/logged", "-o", str(tmp_path / "out"),
        "--base-url", server.base_url, "--api-key", key, "--connections", "4",
        "--part-size", "1048576", "--quiet",
    )  # fmt: skip
    api.close()
    server.stop()

    lines = access_lines(access_file)
    for line in lines:
        assert set(line) >= FIELDS, line
        # Templates, not paths: no ids, no query strings.
        assert "?" not in line["route"] and account not in line["route"], line
        assert "logged" not in line["route"] and "weights.bin" not in line["route"], line
    by_route = Counter((line["method"], line["route"], line["status"]) for line in lines)
    assert by_route[("POST", "/v1/accounts/{account}/models", 200)] == 1
    assert by_route[("PUT", FILE_ROUTE, 200)] == 2
    assert by_route[("GET", "/v1/accounts/{account}/models/{model}:validateUpload", 200)] == 1
    assert by_route[("GET", FILE_ROUTE, 403)] == 1
    assert by_route[("GET", "unmatched", 404)] == 1
    assert by_route[("POST", "/console/sign-in", 303)] == 1

    uploads = [line for line in lines if line["method"] == "PUT"]
    assert all(line["account"] == account and line["key_id"] == key_id for line in uploads)
    (refused,) = [line for line in lines if line["status"] == 403]
    assert refused["error"] == "signature_invalid" and refused["account"] == ""
    (first_range,) = [
        line
        for line in lines
        if line["status"] == 206 and line["user_agent"].startswith("python-httpx")
    ]
    assert first_range["bytes"] == 1024 and first_range["account"] == account
    # The downloader's ranges of weights.bin add up to the file (plus its 1-byte probes).
    downloader = [
        line
        for line in lines
        if line["route"] == FILE_ROUTE
        and line["method"] == "GET"
        and line["user_agent"].startswith("python-urllib3")
    ]
    assert sum(line["bytes"] for line in downloader) >= sum(len(d) for d in files.values())
    assert all(line["key_id"] == key_id for line in downloader)

    # Never a secret: not the key, a signature, a session token, nor a query string.
    everything = access_file.read_text() + (server.log_path.read_text() if server.log_path else "")
    for secret in [key, key.split("_", 2)[2], session_token, *signatures]:
        assert secret not in everything
    assert "X-Goog-" not in access_file.read_text()


def test_logfmt_is_the_default_and_goes_to_stderr(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    account = f"fmt-{secrets.token_hex(3)}"
    key = server.new_account(account)
    response = httpx.get(
        f"{server.base_url}/v1/accounts/{account}/models",
        headers={"Authorization": f"Bearer {key}", "User-Agent": 'odd "agent" = yes'},
    )
    assert response.status_code == 200
    assert httpx.get(f"{server.base_url}/healthz-nope").status_code == 404
    server.stop()
    assert server.log_path is not None
    lines = [
        parse_logfmt(line)
        for line in server.log_path.read_text().splitlines()
        if line.startswith("ts=")
    ]
    (listed,) = [line for line in lines if line["route"] == "/v1/accounts/{account}/models"]
    assert listed["status"] == "200" and listed["level"] == "info"
    assert listed["user_agent"] == 'odd "agent" = yes'
    assert listed["account"] == account
    assert int(listed["bytes"]) == len(response.content)
    assert any(line["status"] == "404" for line in lines)


def test_access_log_level_and_off(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    quiet = tmp_path / "quiet.log"
    server = server_factory(
        tmp_path / "quiet",
        demo=False,
        extra_env={
            "WEIGHTPORT_ACCESS_LOG_FILE": str(quiet),
            "WEIGHTPORT_ACCESS_LOG_LEVEL": "warning",
        },
    ).start()
    assert httpx.get(f"{server.base_url}/v1/accounts/a/models").status_code == 401
    server.stop()
    assert quiet.read_text() == ""  # a 401 is INFO: below the warning threshold

    off = server_factory(
        tmp_path / "off", demo=False, extra_env={"WEIGHTPORT_ACCESS_LOG": "off"}
    ).start()
    assert httpx.get(f"{off.base_url}/v1/accounts/a/models").status_code == 401
    off.stop()
    assert off.log_path is not None
    assert "route=" not in off.log_path.read_text()
