"""The unmodified fireworks-ai client against a real weightport server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections.abc import Iterator

import fireworks
import httpx
import pytest
from fireworks import AsyncFireworks, Fireworks

from tests.conftest import LiveServer


def model_files() -> dict[str, bytes]:
    return {
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 8}).encode(),
        "model.safetensors": secrets.token_bytes(3 * 1024 * 1024 + 17),
        "tokenizer/tokenizer.json": b'{"version": "1.0"}',
        "sub dir/odd name (1).txt": "bytes with ünïcode".encode(),
    }


@pytest.fixture
def account(stack_server: LiveServer) -> Iterator[tuple[str, str]]:
    name = f"fw-{secrets.token_hex(4)}"
    yield name, stack_server.new_account(name)


def upload(urls: dict[str, str], files: dict[str, bytes]) -> None:
    """PUT each file as the Fireworks docs do: octet-stream + x-goog-content-length-range."""
    for path, url in urls.items():
        data = files[path]
        response = httpx.put(
            url,
            content=data,
            headers={
                "Content-Type": "application/octet-stream",
                "x-goog-content-length-range": f"{len(data)},{len(data)}",
            },
        )
        assert response.status_code == 200, response.text
        assert response.content == b""


def test_sync_client_full_lifecycle(stack_server: LiveServer, account: tuple[str, str]) -> None:
    name, key = account
    client = Fireworks(api_key=key, account_id=name, base_url=stack_server.base_url)
    files = model_files()
    created = client.models.create(
        model_id="my-model",
        model={
            "display_name": "My Model",
            "kind": "HF_BASE_MODEL",
            "base_model_details": {"checkpoint_format": "HUGGINGFACE", "world_size": 1},
        },
    )
    assert created.name == f"accounts/{name}/models/my-model"
    assert created.state == "UPLOADING"
    assert created.display_name == "My Model"

    with pytest.raises(fireworks.BadRequestError) as not_ready:
        client.models.get_download_endpoint("my-model")
    assert "FAILED_PRECONDITION" in str(not_ready.value)

    # Sizes as strings (the SDK's type) for some files and numbers for others.
    sizes = {p: (str(len(d)) if i % 2 else len(d)) for i, (p, d) in enumerate(files.items())}
    endpoint = client.models.get_upload_endpoint("my-model", filename_to_size=sizes)  # type: ignore[arg-type]
    assert set(endpoint.filename_to_signed_urls or {}) == set(files)
    assert endpoint.filename_to_unsigned_uris == {}

    with pytest.raises(fireworks.BadRequestError) as early:
        client.models.validate_upload("my-model")
    assert "FAILED_PRECONDITION" in str(early.value)

    upload(endpoint.filename_to_signed_urls or {}, files)
    validated = client.models.validate_upload("my-model")
    assert validated.warnings == []

    got = client.models.get("my-model")
    assert got.state == "READY"
    assert got.base_model_details is not None
    assert got.base_model_details.api_model_type == "llama"
    masked = client.models.get("my-model", read_mask="name,state")
    assert masked.name == got.name and masked.display_name is None

    listed = list(client.models.list())
    assert [m.name for m in listed] == [got.name]

    download = client.models.get_download_endpoint("my-model", read_mask="*")
    signed = download.filename_to_signed_urls or {}
    assert set(signed) == set(files)
    extras = download.model_extra or {}
    for path, url in signed.items():
        body = httpx.get(url)  # signed URLs need no Authorization header
        assert body.status_code == 200
        assert body.content == files[path]
        digest = hashlib.sha256(files[path]).hexdigest()
        if url.startswith(stack_server.base_url):
            # weightport's own route; the scaled stack hands out the store's presigned URLs,
            # whose ETag is the store's.
            assert body.headers["etag"] == f'"{digest}"'
        assert extras["filenameToSha256"][path] == digest
        assert extras["filenameToSize"][path] == str(len(files[path]))

    updated = client.models.update("my-model", description="new desc", display_name="Renamed")
    assert (updated.description, updated.display_name) == ("new desc", "Renamed")
    assert client.models.get("my-model").description == "new desc"

    assert client.models.delete("my-model") == {}
    with pytest.raises(fireworks.NotFoundError):
        client.models.get("my-model")


def test_create_conflict_is_not_retried(stack_server: LiveServer, account: tuple[str, str]) -> None:
    name, key = account
    attempts: list[str] = []
    http = httpx.Client(event_hooks={"request": [lambda r: attempts.append(r.method)]})
    with Fireworks(
        api_key=key, account_id=name, base_url=stack_server.base_url, http_client=http
    ) as client:
        client.models.create(model_id="twice")
        attempts.clear()
        with pytest.raises(fireworks.ConflictError):
            client.models.create(model_id="twice")
    assert attempts == ["POST"]


def test_list_pagination_filter_and_order(
    stack_server: LiveServer, account: tuple[str, str]
) -> None:
    name, key = account
    client = Fireworks(api_key=key, account_id=name, base_url=stack_server.base_url)
    for i in range(5):
        client.models.create(model_id=f"m{i}", model={"display_name": f"Model {i}"})
    page = client.models.list(page_size=2, order_by="name desc")
    assert [m.name.rsplit("/", 1)[-1] for m in page.models or []] == ["m4", "m3"]
    everything = [m.name.rsplit("/", 1)[-1] for m in client.models.list(page_size=2)]
    assert everything == ["m0", "m1", "m2", "m3", "m4"]
    ready = list(client.models.list(filter='state="READY"'))
    assert ready == []
    uploading = list(client.models.list(filter='state = "UPLOADING" AND displayName="Model 3"'))
    assert [m.display_name for m in uploading] == ["Model 3"]
    with pytest.raises(fireworks.BadRequestError):
        client.models.list(filter="state ~ READY")
    with pytest.raises(fireworks.BadRequestError):
        client.models.list(order_by="nonsense")


def test_async_client_lifecycle(stack_server: LiveServer, account: tuple[str, str]) -> None:
    name, key = account
    files = model_files()

    async def run() -> None:
        client = AsyncFireworks(api_key=key, account_id=name, base_url=stack_server.base_url)
        await client.models.create(model_id="async-model", model={"kind": "HF_BASE_MODEL"})
        sizes = {p: str(len(d)) for p, d in files.items()}
        endpoint = await client.models.get_upload_endpoint("async-model", filename_to_size=sizes)
        await asyncio.to_thread(upload, endpoint.filename_to_signed_urls or {}, files)
        await client.models.validate_upload("async-model", skip_hf_config_validation=False)
        download = await client.models.get_download_endpoint("async-model", read_mask="*")
        async with httpx.AsyncClient() as http:
            for path, url in (download.filename_to_signed_urls or {}).items():
                assert (await http.get(url)).content == files[path]
        listed = [m.name async for m in client.models.list()]
        assert listed == [f"accounts/{name}/models/async-model"]
        await client.close()

    asyncio.run(run())


def test_bad_key_is_401_in_the_status_envelope(stack_server: LiveServer) -> None:
    client = Fireworks(api_key="wp_nope", account_id="admin", base_url=stack_server.base_url)
    with pytest.raises(fireworks.AuthenticationError) as excinfo:
        client.models.list()
    assert excinfo.value.status_code == 401
    assert isinstance(excinfo.value.body, dict)
    assert excinfo.value.body["code"] == 16
