"""Defects the schemathesis contract run found, each pinned against the live server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import httpx
from sqlalchemy.orm import Session

from tests.conftest import LiveServer
from weightport.catalog import sessions


@contextmanager
def _api(server: LiveServer, account: str) -> Iterator[tuple[httpx.Client, str]]:
    key = server.new_account(account)
    with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=30) as client:
        yield client, f"{server.base_url}/v1/accounts/{account}/models"


def test_a_kind_that_is_not_a_string_is_a_400(live_server: LiveServer) -> None:
    with _api(live_server, "reg-kind") as (client, base):
        assert client.post(base, json={"modelId": "m"}).status_code == 200
        for body in ({"kind": {}}, {"kind": []}, {"kind": 3}):
            response = client.patch(f"{base}/m", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["code"] == 3
            assert "unknown kind" in response.json()["message"]


def test_model_must_be_an_object_or_null(live_server: LiveServer) -> None:
    with _api(live_server, "reg-model") as (client, base):
        assert client.post(base, json={"modelId": "a", "model": None}).status_code == 200
        for value in (False, 0, "x", []):
            response = client.post(base, json={"modelId": "b", "model": value})
            assert response.status_code == 400, response.text
            assert response.json()["message"] == "model must be an object"


def test_405_names_the_allowed_methods(live_server: LiveServer) -> None:
    with _api(live_server, "reg-allow") as (client, base):
        cases = {
            ("TRACE", base): "GET, POST",
            ("PUT", f"{base}/m"): "DELETE, GET, PATCH",
            ("POST", f"{base}/m:getDownloadEndpoint"): "GET",
            ("DELETE", f"{live_server.base_url}/v1/fine-tunes"): "GET, HEAD",
            ("POST", f"{live_server.base_url}/openapi.json"): "GET, HEAD",
            ("TRACE", f"{live_server.base_url}/console"): "GET, HEAD",
            ("PUT", f"{live_server.base_url}/console/models"): "GET, HEAD",
        }
        for (method, url), allowed in cases.items():
            response = client.request(method, url)
            assert response.status_code == 405, (method, url, response.text)
            assert response.headers["Allow"] == allowed, (method, url)


def test_a_method_is_refused_before_the_account_is_checked(live_server: LiveServer) -> None:
    # 405 for a method no route shape takes, whoever asks and whichever account is named:
    # it says nothing about the account (a 404 would be the isolation answer for GET).
    with _api(live_server, "reg-order") as (client, _):
        other = f"{live_server.base_url}/v1/accounts/someone-else/models/m"
        assert client.request("TRACE", other).status_code == 405
        assert httpx.request("TRACE", other).status_code == 405
        assert client.get(other).status_code == 404


def _session_cookie(server: LiveServer, account: str) -> dict[str, str]:
    key = server.new_account(account)
    catalog = server.catalog()
    try:

        def run(session: Session) -> str:
            return sessions.start(session, key, 3600).token

        return {"wp_session": catalog.call(run)}
    finally:
        catalog.close()


def test_console_forms_that_cannot_be_read_are_a_400(live_server: LiveServer) -> None:
    cookies = _session_cookie(live_server, "reg-form")
    url = f"{live_server.base_url}/console/sign-out"
    no_boundary = httpx.post(
        url,
        cookies=cookies,
        content=b"csrf_token=",
        headers={"Content-Type": "multipart/form-data"},
    )
    assert no_boundary.status_code == 400, no_boundary.text
    assert "could not be read" in no_boundary.text
    bad_part = httpx.post(
        url,
        cookies=cookies,
        content=b'--b\r\nContent-Disposition: form-data; name="\x01"\r\n\x00bad\r\n\r\n'
        b"x\r\n--b--\r\n",
        headers={"Content-Type": "multipart/form-data; boundary=b"},
    )
    assert bad_part.status_code == 400, bad_part.text


def test_a_non_ascii_csrf_token_is_refused_not_a_crash(live_server: LiveServer) -> None:
    cookies = _session_cookie(live_server, "reg-csrf")
    response = httpx.post(
        f"{live_server.base_url}/console/sign-out",
        cookies=cookies,
        data={"csrf_token": "jÃ©ton-ß"},
    )
    assert response.status_code == 403, response.text
    assert "security token" in response.text


def test_hub_forms_that_cannot_be_read_are_a_400(live_server: LiveServer) -> None:
    response = httpx.post(
        f"{live_server.base_url}/hf/api/models/admin/demo-llama/paths-info/main",
        headers={
            "Authorization": f"Bearer {live_server.admin_key}",
            "Content-Type": "multipart/form-data",
        },
        content=b"expand=false",
    )
    assert response.status_code == 400, response.text
    assert response.headers["X-Error-Code"] == "BadRequest"


def test_hub_405_names_the_allowed_methods(live_server: LiveServer) -> None:
    response = httpx.delete(f"{live_server.base_url}/hf/api/models/admin/demo-llama")
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.headers["X-Error-Code"] == "MethodNotAllowed"


def test_the_server_log_has_no_traceback(live_server: LiveServer) -> None:
    assert live_server.log_path is not None
    assert "Traceback" not in live_server.log_path.read_text()
