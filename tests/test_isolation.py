"""One account never sees another's data: every route answers 404, as for missing things."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer


@pytest.fixture(scope="module")
def intruder(live_server: LiveServer) -> Iterator[httpx.Client]:
    account = f"intruder-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    with httpx.Client(
        base_url=live_server.base_url, headers={"Authorization": f"Bearer {key}"}, timeout=30
    ) as client:
        yield client


@pytest.fixture(scope="module")
def admin_job(live_server: LiveServer) -> str:
    jobs = httpx.get(
        f"{live_server.base_url}/v1/fine-tunes",
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    ).json()["data"]
    job_id: str = jobs[0]["id"]
    return job_id


FIREWORKS_ROUTES = [
    ("GET", "/v1/accounts/admin/models", None),
    ("POST", "/v1/accounts/admin/models", {"modelId": "planted"}),
    ("GET", "/v1/accounts/admin/models/demo-llama", None),
    ("PATCH", "/v1/accounts/admin/models/demo-llama", {"displayName": "pwned"}),
    ("DELETE", "/v1/accounts/admin/models/demo-llama", None),
    ("GET", "/v1/accounts/admin/models/demo-llama:getDownloadEndpoint", None),
    (
        "POST",
        "/v1/accounts/admin/models/demo-llama:getUploadEndpoint",
        {"filenameToSize": {"a": 1}},
    ),
    ("GET", "/v1/accounts/admin/models/demo-llama:validateUpload", None),
    ("POST", "/v1/accounts/admin/models/demo-llama:prepare", {}),
]


@pytest.mark.parametrize(("method", "path", "body"), FIREWORKS_ROUTES)
def test_fireworks_routes_hide_other_accounts(
    intruder: httpx.Client, method: str, path: str, body: object
) -> None:
    response = intruder.request(method, path, json=body)
    assert response.status_code == 404
    assert response.json()["code"] == 5


def test_together_routes_hide_other_accounts(
    live_server: LiveServer, intruder: httpx.Client, admin_job: str
) -> None:
    for path in (
        f"/v1/fine-tunes/{admin_job}",
        f"/v1/fine-tunes/{admin_job}/checkpoints",
        f"/v1/finetune/download?ft_id={admin_job}&checkpoint=adapter",
    ):
        response = intruder.get(path)
        assert response.status_code == 404, path
        assert response.json()["error"]["type"] == "invalid_request_error"
    assert intruder.get("/v1/fine-tunes").json()["data"] == []
    for path, body in (
        (f"/weightport/v1/fine-tunes/{admin_job}/checkpoints", {"step": 99, "model": "x"}),
        (f"/weightport/v1/fine-tunes/{admin_job}/archives", {}),
        ("/weightport/v1/fine-tunes", {"base_model": "demo-llama", "training_type": "Full"}),
    ):
        assert intruder.post(path, json=body).status_code == 404, path
    # And nothing changed for the owner.
    owner = httpx.get(
        f"{live_server.base_url}/v1/accounts/admin/models/demo-llama",
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    )
    assert owner.json()["displayName"] == "Demo Llama (tiny)"


def test_missing_and_revoked_keys_are_401(live_server: LiveServer) -> None:
    for headers in ({}, {"Authorization": "Bearer wp_0_bogus"}, {"Authorization": "Basic x"}):
        fw = httpx.get(f"{live_server.base_url}/v1/accounts/admin/models", headers=headers)
        assert fw.status_code == 401 and fw.json()["code"] == 16
        tg = httpx.get(f"{live_server.base_url}/v1/fine-tunes", headers=headers)
        assert tg.status_code == 401 and tg.json()["error"]["type"] == "authentication_error"


def test_the_download_listing_checks_its_key_like_every_route(
    live_server: LiveServer, intruder: httpx.Client
) -> None:
    # getDownloadEndpoint checks the key in the transaction that reads the model: the same
    # answers as the routes that check it first.
    path = "/v1/accounts/admin/models/{}:getDownloadEndpoint"
    for headers in ({}, {"Authorization": "Bearer wp_0_bogus"}, {"Authorization": "Basic x"}):
        response = httpx.get(live_server.base_url + path.format("demo-llama"), headers=headers)
        assert response.status_code == 401 and response.json()["code"] == 16
    # Another account's model answers exactly as a model that does not exist.
    real, missing = (intruder.get(path.format(name)) for name in ("demo-llama", "no-such-model"))
    assert real.status_code == missing.status_code == 404
    assert real.json()["message"] == missing.json()["message"].replace(
        "no-such-model", "demo-llama"
    )
    owner = httpx.get(
        live_server.base_url + path.format("demo-llama"),
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    )
    assert owner.status_code == 200 and owner.json()["filenameToSignedUrls"]
