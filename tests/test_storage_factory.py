"""The store factory: ``storage_url`` picks the store for the server and the CLI alike."""

from __future__ import annotations

import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, free_port
from tests.seaweedfs import SeaweedFS
from tests.storage_conformance import PAYLOAD, put
from weightport import demo
from weightport.config import Settings, load_settings
from weightport.errors import InvalidArgument
from weightport.storage.base import LocalPaths
from weightport.storage.factory import open_store

KEY = hashlib.sha256(b"any").hexdigest()


def blob_path(settings: Settings) -> Path:
    """Where the store ``settings`` open keeps blob ``KEY``."""
    store = open_store(settings)
    assert isinstance(store, LocalPaths)
    return store.local_path(KEY)


def blob_file(root: Path, key: str = KEY) -> Path:
    """Where a local store rooted at ``root`` keeps blob ``key``."""
    return root / "blobs" / key[:2] / key[2:4] / key


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_default_is_the_local_store_in_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    assert blob_path(settings) == blob_file(tmp_path / "data" / "store")


@pytest.mark.parametrize("form", ["plain", "file-url", "file-url-localhost"])
def test_local_store_elsewhere(tmp_path: Path, form: str) -> None:
    root = tmp_path / "blobs elsewhere"
    url = {
        "plain": str(root),
        "file-url": root.as_uri(),
        "file-url-localhost": root.as_uri().replace("file://", "file://localhost"),
    }[form]
    settings = Settings(data_dir=tmp_path / "data", storage_url=url)
    assert blob_path(settings) == blob_file(root)
    info = put(open_store(settings), PAYLOAD)
    assert blob_file(root, info.key).read_bytes() == PAYLOAD
    assert not (tmp_path / "data" / "store").exists()


def test_relative_path_is_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    settings = load_settings({"data_dir": "data"}, environ={"WEIGHTPORT_STORAGE_URL": "blobs"})
    assert settings.storage_url == "blobs"
    assert blob_path(settings).resolve() == blob_file(tmp_path / "blobs")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "expected s3://BUCKET/PREFIX"),
        ("s3://bucket/../up", "'.' and '..' are not allowed"),
        ("gs://bucket/prefix", "unsupported scheme 'gs'"),
        ("https://example.com/blobs", "unsupported scheme 'https'"),
        ("file://otherhost/srv/blobs", "file:///absolute/path"),
    ],
)
def test_urls_it_cannot_open_are_one_clear_error(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match="storage_url") as info:
        open_store(Settings(data_dir=tmp_path, storage_url=url))
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_housekeeping_removes_crash_leftovers_only_when_asked(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    upload = open_store(settings).begin_upload()
    upload.write(b"interrupted")  # never committed nor aborted: what a crash leaves
    leftover = next((tmp_path / "store" / "tmp").iterdir())
    open_store(settings)  # e.g. a CLI import beside a live server: must not touch it
    assert leftover.exists()
    open_store(settings, housekeeping=True)  # the server starting
    assert not leftover.exists()


def run_weightport(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightport", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("command", ["serve", "import"])
def test_bad_s3_url_stops_commands_with_one_line(tmp_path: Path, command: str) -> None:
    data = ["--data-dir", str(tmp_path / "data")]
    args = {
        "serve": ["serve", "--port", str(free_port()), *data],
        "import": ["finetunes", "import", "--base-model", "m", "--final", f"1={tmp_path}", *data],
    }[command]
    result = run_weightport(*args, env={"WEIGHTPORT_STORAGE_URL": "s3:///no-bucket"})
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: storage_url 's3:///no-bucket")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "data" / "catalog.sqlite3").exists()  # refused before any migration


@pytest.mark.parametrize("kind", ["file", "s3"])
def test_server_and_cli_use_the_configured_store(
    server_factory: Callable[..., LiveServer],
    tmp_path: Path,
    kind: str,
    request: pytest.FixtureRequest,
) -> None:
    root = tmp_path / "shared-blobs"
    if kind == "file":
        env = {"WEIGHTPORT_STORAGE_URL": root.as_uri()}

        def stored_bytes(key: str) -> bytes | None:
            path = blob_file(root, key)
            return path.read_bytes() if path.exists() else None

    else:
        weed: SeaweedFS = request.getfixturevalue("seaweedfs")
        prefix = f"factory-{secrets.token_hex(4)}/"
        env = {
            **weed.env(),
            "WEIGHTPORT_STORAGE_URL": f"s3://{weed.bucket}/{prefix}",
            "WEIGHTPORT_S3_ENDPOINT": weed.endpoint,
        }

        def stored_bytes(key: str) -> bytes | None:
            client: Any = weed.client()
            try:
                got = client.get_object(Bucket=weed.bucket, Key=f"{prefix}blobs/{key}")
            except client.exceptions.NoSuchKey:
                return None
            return bytes(got["Body"].read())

    server = server_factory(tmp_path / "data", extra_env=env).start()  # seeds the demo
    assert not (server.data_dir / "store").exists()
    weights = demo.demo_base_files()["model.safetensors"]
    assert stored_bytes(sha(weights)) == weights

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for name, body in demo.demo_adapter_files(7).items():
        (adapter / name).write_bytes(body)
    imported = run_weightport(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--final", f"7={adapter}",
        "--suffix", "elsewhere", "--data-dir", str(server.data_dir), env=env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    adapter_weights = (adapter / "adapter_model.safetensors").read_bytes()
    assert stored_bytes(sha(adapter_weights)) == adapter_weights
    assert not (server.data_dir / "store").exists()

    ft_id = imported.stdout.strip()
    response = httpx.get(
        f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=adapter",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=60,
    )
    assert response.status_code == 200 and len(response.content) > len(adapter_weights)
