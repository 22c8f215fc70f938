"""Bad input gets a clear 4xx in the caller's envelope — never a 500, never a traceback."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.raw_http import exchange, request_head


@pytest.fixture(scope="module")
def api(live_server: LiveServer) -> Iterator[FireworksApi]:
    account = f"bad-{secrets.token_hex(3)}"
    client = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    assert client.create("target").status_code == 200
    yield client
    client.close()


def assert_status_envelope(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, object] = response.json()
    assert set(body) == {"code", "message", "details"}
    assert "Traceback" not in response.text
    return body


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/x", "a\\b", "a\x00b", "a//b", "./a", "a/./b", "a/../b", "", "x/"],
)
def test_unsafe_upload_names_are_rejected(api: FireworksApi, name: str) -> None:
    response = api.http.post(
        f"{api.base}/target:getUploadEndpoint", json={"filenameToSize": {name: 1}}
    )
    assert_status_envelope(response, 400)


@pytest.mark.parametrize("size", [-1, "12x", True, None, 1.5, [1]])
def test_bad_sizes_are_rejected(api: FireworksApi, size: object) -> None:
    response = api.http.post(
        f"{api.base}/target:getUploadEndpoint", json={"filenameToSize": {"a.bin": size}}
    )
    assert_status_envelope(response, 400)


@pytest.mark.parametrize(
    ("body", "status"),
    [(b"{not json", 400), (b"[1, 2]", 400), (b"", 400), (b"x" * (5 * 1024 * 1024), 413)],
)
def test_malformed_bodies(api: FireworksApi, body: bytes, status: int) -> None:
    response = api.http.post(api.base, content=body, headers={"Content-Type": "application/json"})
    assert_status_envelope(response, status)


@pytest.mark.parametrize("model_id", ["Bad_ID", "a" * 200, "-lead", "sp ace", "x:y"])
def test_invalid_model_ids(api: FireworksApi, model_id: str) -> None:
    assert_status_envelope(api.create(model_id), 400)


def test_unknown_model_verb_and_method(api: FireworksApi) -> None:
    body = assert_status_envelope(api.http.get(f"{api.base}/nope"), 404)
    assert body["code"] == 5
    assert_status_envelope(api.http.get(f"{api.base}/target:frobnicate"), 404)
    assert_status_envelope(api.http.post(f"{api.base}/target:validateUpload"), 405)
    assert_status_envelope(api.http.put(api.base), 405)
    assert_status_envelope(api.http.get(f"{api.base}?pageToken=abc"), 400)
    assert_status_envelope(api.http.get(f"{api.base}/target?readMask=bogusField"), 400)
    assert_status_envelope(api.http.get(f"{api.base}/target:validateUpload?configOnly=maybe"), 400)
    assert_status_envelope(api.http.get(f"{api.base.rsplit('/v1', 1)[0]}/v1/nothing"), 404)


def test_wrong_upload_sizes_and_ready_models(api: FireworksApi) -> None:
    assert api.create("sized").status_code == 200
    urls = api.upload_urls("sized", {"w.bin": 10, "config.json": 2})
    short = httpx.put(urls["w.bin"], content=b"123")
    assert_status_envelope(short, 400)
    long = httpx.put(urls["w.bin"], content=b"x" * 11)
    assert_status_envelope(long, 400)
    ranged = httpx.put(
        urls["w.bin"], content=b"x" * 10, headers={"x-goog-content-length-range": "0,5"}
    )
    assert_status_envelope(ranged, 400)
    validate = assert_status_envelope(api.validate("sized"), 400)
    assert "FAILED_PRECONDITION" in str(validate["message"]) and "w.bin" in str(validate["message"])
    assert httpx.put(urls["w.bin"], content=b"0123456789").status_code == 200
    assert httpx.put(urls["config.json"], content=b"{}").status_code == 200
    assert api.validate("sized").status_code == 200
    again = api.http.post(
        f"{api.base}/sized:getUploadEndpoint", json={"filenameToSize": {"w.bin": 10}}
    )
    assert "FAILED_PRECONDITION" in str(assert_status_envelope(again, 400)["message"])
    # The old upload URL cannot overwrite a READY model's file.
    assert httpx.put(urls["w.bin"], content=b"9876543210").status_code == 400
    assert httpx.get(api.download_urls("sized")["filenameToSignedUrls"]["w.bin"]).content == (
        b"0123456789"
    )


def test_invalid_config_json_is_a_precondition_failure(api: FireworksApi) -> None:
    assert api.create("badconfig", kind="HF_BASE_MODEL").status_code == 200
    urls = api.upload_urls("badconfig", {"config.json": 5})
    assert httpx.put(urls["config.json"], content=b"{nope").status_code == 200
    body = assert_status_envelope(api.validate("badconfig"), 400)
    assert "config.json" in str(body["message"])


@pytest.mark.parametrize(
    ("query", "status"),
    [
        ("", 400),
        ("ft_id=nope", 400),
        ("ft_id=ft-00000000-0000-0000-0000-000000000000", 404),
        ("ft_id=ft-garbage", 404),
    ],
)
def test_together_download_parameters(live_server: LiveServer, query: str, status: int) -> None:
    response = httpx.get(
        f"{live_server.base_url}/v1/finetune/download?{query}",
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    )
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}


def test_together_checkpoint_parameters(live_server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {live_server.admin_key}"}
    job = httpx.get(f"{live_server.base_url}/v1/fine-tunes", headers=headers).json()["data"][0]
    base = f"{live_server.base_url}/v1/finetune/download?ft_id={job['id']}"
    for extra in ("&checkpoint=bogus", "&checkpoint_step=abc", "&checkpoint_step=-3"):
        response = httpx.get(base + extra, headers=headers)
        assert response.status_code == 400, extra
        assert response.json()["error"]["param"] in ("checkpoint", "checkpoint_step")
    for lenient in ("&checkpoint=default", "&checkpoint=model_output_path", "&checkpoint=model"):
        response = httpx.get(base + lenient, headers={**headers, "Range": "bytes=0-1"})
        assert response.status_code == 206, lenient


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"modelId": "deep", "model": {"x": ' + b"[" * 200 + b"]" * 200 + b"}}", "nested"),
        (b'{"modelId": "nan", "model": {"contextLength": NaN}}', "NaN"),
        (b'{"modelId": "inf", "model": {"contextLength": -Infinity}}', "Infinity"),
        (b'{"modelId": "huge", "model": {"contextLength": 1e999}}', "not finite"),
        (b'{"modelId": "sur", "model": {"displayName": "\\ud800"}}', "surrogate"),
        (b'{"modelId": "\\udfff"}', "surrogate"),
        (b'{"modelId": "key", "model": {"\\ud83d": 1}}', "surrogate"),
        (b'{"modelId": "bytes", "model": {"displayName": "\xff\xfe"}}', "malformed JSON"),
    ],
)
def test_json_bodies_no_store_can_hold(api: FireworksApi, body: bytes, words: str) -> None:
    response = api.http.post(api.base, content=body, headers={"Content-Type": "application/json"})
    assert words in str(assert_status_envelope(response, 400)["message"])


@pytest.mark.parametrize(
    "query",
    [
        "pageToken=99999999999999999999999",
        "pageToken=9223372036854775808",
        "pageToken=-1",
        "pageToken=" + "9" * 5000,
        "pageSize=" + "9" * 5000,
        "pageSize=-99999999999999999999999",
    ],
)
def test_list_parameters_out_of_range(api: FireworksApi, query: str) -> None:
    assert_status_envelope(api.http.get(f"{api.base}?{query}"), 400)


def test_huge_page_size_is_capped(api: FireworksApi) -> None:
    response = api.http.get(f"{api.base}?pageSize=99999999999999999999999")
    assert response.status_code == 200, response.text


def test_undecodable_api_key_is_401(live_server: LiveServer) -> None:
    head = request_head("GET", "/v1/accounts/admin/models", {"Authorization": "Bearer KEY"})
    response = exchange(live_server.port, [head.replace(b"KEY", b"wp_\xff\xfe_\x80")])
    assert response.status == 401
    assert response.json()["code"] == 16


def test_deeply_nested_config_json_is_a_precondition_failure(api: FireworksApi) -> None:
    assert api.create("deepconfig", kind="HF_BASE_MODEL").status_code == 200
    config = b"[" * 100_000 + b"]" * 100_000
    urls = api.upload_urls("deepconfig", {"config.json": len(config)})
    assert httpx.put(urls["config.json"], content=config).status_code == 200
    body = assert_status_envelope(api.validate("deepconfig"), 400)
    assert "config.json" in str(body["message"])


def test_checkpoint_step_beyond_the_catalog_range(api: FireworksApi) -> None:
    key = str(api.http.headers["Authorization"])
    response = httpx.post(
        api.base.split("/v1/")[0] + "/weightport/v1/fine-tunes",
        headers={"Authorization": key},
        json={
            "base_model": "target",
            "training_type": "Full",
            "checkpoints": [{"step": 10**23, "kind": "final", "model": "target"}],
        },
    )
    assert response.status_code == 400, response.text
    assert "step" in response.json()["error"]["message"]


@pytest.mark.parametrize("training_type", ["Lora", "Full"])
def test_deeply_nested_checkpoint_json_is_400(api: FireworksApi, training_type: str) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    base, ckpt = f"nest-base-{training_type.lower()}", f"nest-ckpt-{training_type.lower()}"
    api.publish(base, {"config.json": b"{}"})
    name = "adapter_config.json" if training_type == "Lora" else "config.json"
    assert api.create(ckpt, kind="CUSTOM_MODEL").status_code == 200
    urls = api.upload_urls(ckpt, {name: len(deep)})
    assert httpx.put(urls[name], content=deep).status_code == 200
    assert api.validate(ckpt).status_code == 200
    response = httpx.post(
        api.base.split("/v1/")[0] + "/weightport/v1/fine-tunes",
        headers={"Authorization": str(api.http.headers["Authorization"])},
        json={
            "base_model": base,
            "training_type": training_type,
            "checkpoints": [{"step": 1, "kind": "final", "model": ckpt}],
        },
    )
    assert response.status_code == 400, response.text
    assert "not valid JSON" in response.json()["error"]["message"]
