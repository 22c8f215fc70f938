"""``weightport models push`` never reports success unless the server holds the local bytes:
foreign bytes already under a file's name are replaced, and of two concurrent pushes of one
model id exactly one succeeds — serving its own bytes — while the other fails clearly."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import clean_env, one_error_line, weightport
from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi

TRIALS = 8
SIZES = {"config.json": 64, "w1.bin": 2 << 20, "w2.bin": 2 << 20, "sub/w3.bin": 1 << 20}


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[FireworksApi]:
    account = f"integrity-{secrets.token_hex(3)}"
    client = FireworksApi(live_server.base_url, account, live_server.new_account(account))
    yield client
    client.close()


def _key(api: FireworksApi) -> str:
    return str(api.http.headers["Authorization"]).removeprefix("Bearer ")


def _model_dir(root: Path) -> dict[str, bytes]:
    files = {path: os.urandom(size) for path, size in SIZES.items()}
    for path, body in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(body)
    return files


def _push_args(api: FireworksApi, folder: Path, model_id: str) -> list[str]:
    base = api.base.split("/v1/")[0]
    return [
        *("models", "push", str(folder), "--model", model_id, "--kind", "CUSTOM_MODEL"),
        *("--quiet", "--base-url", base, "--api-key", _key(api), "--account", api.account),
    ]


def _served(api: FireworksApi, model_id: str) -> dict[str, bytes]:
    urls = api.download_urls(model_id)["filenameToSignedUrls"]
    return {path: httpx.get(url).content for path, url in urls.items()}


def test_push_replaces_foreign_bytes_of_the_same_size(api: FireworksApi, tmp_path: Path) -> None:
    ours = _model_dir(tmp_path / "ours")
    assert api.create("x", kind="CUSTOM_MODEL").status_code == 200
    # Another client declares w1.bin (no sha256) and lands bytes of the same size.
    foreign = os.urandom(SIZES["w1.bin"])
    stale_url = api.upload_urls("x", {"w1.bin": len(foreign)})["w1.bin"]
    assert httpx.put(stale_url, content=foreign).status_code == 200

    pushed = weightport(*_push_args(api, tmp_path / "ours", "x"))
    assert "READY" in pushed.stdout and "sha256 verified" in pushed.stdout
    assert _served(api, "x") == ours
    assert httpx.put(stale_url, content=foreign).status_code == 400  # READY: immutable


def test_declared_sha256_refuses_other_bytes(api: FireworksApi) -> None:
    body, other = os.urandom(1000), os.urandom(1000)
    assert api.create("pinned", kind="CUSTOM_MODEL").status_code == 200
    declared = api.http.post(
        f"{api.base}/pinned:getUploadEndpoint",
        json={
            "filenameToSize": {"w.bin": 1000},
            "filenameToSha256": {"w.bin": hashlib.sha256(body).hexdigest()},
        },
    )
    assert declared.status_code == 200, declared.text
    url = declared.json()["filenameToSignedUrls"]["w.bin"]
    refused = httpx.put(url, content=other)
    assert refused.status_code == 400
    assert "sha256" in refused.json()["message"]
    assert "not uploaded yet: w.bin" in api.validate("pinned").json()["message"]
    assert httpx.put(url, content=body).status_code == 200
    assert api.validate("pinned").status_code == 200


@pytest.mark.parametrize(
    "digests",
    [{"nope.bin": "0" * 64}, {"w.bin": "xyz"}, {"w.bin": 5}, ["w.bin"]],
    ids=["undeclared-path", "not-hex", "not-a-string", "not-an-object"],
)
def test_malformed_digests_are_400(api: FireworksApi, digests: object) -> None:
    assert api.create("bad-digests", kind="CUSTOM_MODEL").status_code in (200, 409)
    response = api.http.post(
        f"{api.base}/bad-digests:getUploadEndpoint",
        json={"filenameToSize": {"w.bin": 1}, "filenameToSha256": digests},
    )
    assert response.status_code == 400
    assert "filenameToSha256" in response.text or "sha256 of" in response.text


def test_concurrent_pushes_of_one_id_exactly_one_wins(api: FireworksApi, tmp_path: Path) -> None:
    contents = {side: _model_dir(tmp_path / side) for side in ("a", "b")}
    for trial in range(TRIALS):
        model_id = f"race-{trial}"
        runs = {
            side: subprocess.Popen(
                [sys.executable, "-m", "weightport", *_push_args(api, tmp_path / side, model_id)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=clean_env(),
            )
            for side in contents
        }
        results = {side: (run.wait(), run.communicate()) for side, run in runs.items()}
        winners = [side for side, (code, _) in results.items() if code == 0]
        assert len(winners) == 1, (trial, results)
        assert _served(api, model_id) == contents[winners[0]], trial
        (loser,) = set(results) - set(winners)
        code, (_, stderr) = results[loser]
        completed = subprocess.CompletedProcess[str]([], code, "", stderr)
        assert code == 1 and "Traceback" not in stderr
        assert one_error_line(completed)
