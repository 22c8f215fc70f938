"""JSON request bodies are read to the end, however they arrive (issue: bodies that came in
more than one TCP segment were cut at the first one and refused as malformed JSON)."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator

import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.raw_http import exchange, request_head


@pytest.fixture(scope="module")
def api(live_server: LiveServer) -> Iterator[FireworksApi]:
    account = f"body-{secrets.token_hex(3)}"
    client = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    yield client
    client.close()


def _key(api: FireworksApi) -> str:
    return str(api.http.headers["Authorization"]).removeprefix("Bearer ")


def _post_in_pieces(
    server: LiveServer, api: FireworksApi, path: str, body: bytes, parts: int
) -> tuple[int, dict[str, object]]:
    """POST ``body`` to ``path`` in ``parts`` TCP segments with a pause between them."""
    head = request_head(
        "POST",
        path,
        {
            "Authorization": f"Bearer {_key(api)}",
            "Content-Type": "application/json",
            "Content-Length": str(len(body)),
        },
    )
    step = -(-len(body) // parts)
    pieces = [head] + [body[i : i + step] for i in range(0, len(body), step)]
    response = exchange(server.port, pieces, pause_s=0.3)
    return response.status, response.json()


def _collection_path(api: FireworksApi) -> str:
    return f"/v1/accounts/{api.account}/models"


def test_body_over_one_megabyte_is_read_whole(api: FireworksApi) -> None:
    notes = "n" * 1_200_000
    response = api.create("big-body", notes=notes)
    assert response.status_code == 200, response.text
    assert api.http.get(f"{api.base}/big-body").json()["notes"] == notes


def test_sixty_kilobyte_body_in_two_segments(live_server: LiveServer, api: FireworksApi) -> None:
    body = json.dumps({"modelId": "two-segments", "model": {"notes": "s" * 60_000}}).encode()
    status, answer = _post_in_pieces(live_server, api, _collection_path(api), body, parts=2)
    assert status == 200, answer
    assert answer["name"] == f"accounts/{api.account}/models/two-segments"


def test_ten_thousand_file_upload_body_in_pieces(
    live_server: LiveServer, api: FireworksApi
) -> None:
    assert api.create("many-files").status_code == 200
    sizes = {f"shards/model-{i:05d}-of-10000.safetensors": 1 for i in range(10_000)}
    body = json.dumps({"filenameToSize": sizes}).encode()
    assert len(body) > 400_000
    path = f"{_collection_path(api)}/many-files:getUploadEndpoint"
    status, answer = _post_in_pieces(live_server, api, path, body, parts=5)
    assert status == 200, answer
    urls = answer["filenameToSignedUrls"]
    assert isinstance(urls, dict)
    assert set(urls) == set(sizes)


def test_chunked_body_over_the_limit_is_413(live_server: LiveServer, api: FireworksApi) -> None:
    # No Content-Length: the limit must hold while reading, not only from the header.
    head = request_head(
        "POST",
        _collection_path(api),
        {
            "Authorization": f"Bearer {_key(api)}",
            "Content-Type": "application/json",
            "Transfer-Encoding": "chunked",
        },
    )
    chunk = b"x" * (1 << 20)
    pieces = [head] + [b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(5)] + [b"0\r\n\r\n"]
    response = exchange(live_server.port, pieces)
    assert response.status == 413
    assert response.json()["code"] == 3
