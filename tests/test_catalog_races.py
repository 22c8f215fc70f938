"""Concurrent and dependent catalog changes get their own clear answers, never a 500: the
database's constraints decide, and their refusals are translated at the catalog layer."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi

PAIRS = 40


@pytest.fixture(scope="module")
def api(live_server: LiveServer) -> Iterator[FireworksApi]:
    account = f"race-{secrets.token_hex(3)}"
    client = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    yield client
    client.close()


def _create_together(api: FireworksApi, model_id: str) -> list[httpx.Response]:
    """Two creates of one id, released at the same moment from two threads."""
    start = threading.Barrier(2)
    answers: list[httpx.Response] = []

    def create() -> None:
        with httpx.Client(headers=api.http.headers, timeout=60) as http:
            start.wait()
            answers.append(http.post(api.base, json={"modelId": model_id, "model": {}}))

    threads = [threading.Thread(target=create) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers


def test_concurrent_creates_of_one_id_are_200_and_409(api: FireworksApi) -> None:
    for pair in range(PAIRS):
        answers = _create_together(api, f"twin-{pair}")
        statuses = sorted(a.status_code for a in answers)
        assert statuses == [200, 409], [a.text for a in answers]
        conflict = next(a for a in answers if a.status_code == 409)
        assert conflict.json()["code"] == 6  # ALREADY_EXISTS
        assert conflict.headers["x-should-retry"] == "false"


def _full_weights(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((8, 4), dtype=np.float32)
    return {"config.json": b'{"model_type": "llama"}', "model.safetensors": save({"w": weight})}


def test_deleting_a_fine_tunes_base_model_names_the_fine_tune(
    live_server: LiveServer, api: FireworksApi
) -> None:
    api.publish("base", _full_weights(1))
    api.publish("final", _full_weights(2))
    registered = httpx.post(
        f"{live_server.base_url}/weightport/v1/fine-tunes",
        headers=api.http.headers,
        json={
            "base_model": "base",
            "training_type": "Full",
            "checkpoints": [{"step": 10, "kind": "final", "model": "final"}],
        },
    )
    assert registered.status_code == 200, registered.text
    ft_id = registered.json()["id"]

    refused = api.http.delete(f"{api.base}/base")
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] == 9  # FAILED_PRECONDITION
    assert ft_id in body["message"] and "base model" in body["message"]
    assert api.http.get(f"{api.base}/base").status_code == 200

    # A model a checkpoint was registered from is not needed by it: the checkpoint keeps
    # its own references to the blobs, and the fine-tune still downloads.
    assert api.http.delete(f"{api.base}/final").status_code == 200
    download = httpx.get(
        f"{live_server.base_url}/v1/finetune/download?ft_id={ft_id}",
        headers={**api.http.headers, "Range": "bytes=0-1"},
    )
    assert download.status_code == 206
