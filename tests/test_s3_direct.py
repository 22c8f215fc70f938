"""Direct transfers with an S3 store: presigned URLs for the public endpoint, hashed uploads.

A TCP proxy stands in front of SeaweedFS as the *public* endpoint, so every presigned URL a
client uses is signed for a host other than the one weightport talks to, as in production.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fireworks import Fireworks
from together import Together

from tests.archive_helpers import archive_files, wait_for_build
from tests.conftest import LiveServer, demo_job_of
from tests.fw_helpers import FireworksApi
from tests.seaweedfs import SeaweedFS
from tests.tcp_proxy import TcpProxy
from tests.together_cli import run_cli
from weightport import demo
from weightport.catalog import audit
from weightport.client import DownloadOptions, FireworksModel, HttpSession, RemoteFile, download
from weightport.client.sources import ApiConfig
from weightport.storage.s3 import S3Location

KiB = 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def model_files() -> dict[str, bytes]:
    return {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": secrets.token_bytes(3 * 1024 * 1024 + 5),
        "tokenizer/tokenizer.json": secrets.token_bytes(100 * KiB),
    }


class S3Stack:
    """A server on SeaweedFS whose clients reach the store through ``public`` (a proxy)."""

    def __init__(
        self,
        server: LiveServer,
        weed: SeaweedFS,
        prefix: str,
        public: TcpProxy,
        cleanup: contextlib.ExitStack,
    ) -> None:
        self.cleanup = cleanup
        self.server = server
        self.weed = weed
        self.prefix = prefix
        self.public = public

    def keys(self, under: str) -> list[str]:
        client: Any = self.weed.client()
        found = client.list_objects_v2(Bucket=self.weed.bucket, Prefix=self.prefix + under)
        return sorted(o["Key"][len(self.prefix) :] for o in found.get("Contents", []))

    def account(self) -> tuple[FireworksApi, str, str]:
        name = f"s3-{secrets.token_hex(3)}"
        key = self.server.new_account(name)
        api = FireworksApi(self.server.base_url, name, key)
        self.cleanup.callback(api.close)
        return api, name, key


@pytest.fixture
def s3_stack(
    seaweedfs: SeaweedFS, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> Iterator[Callable[..., S3Stack]]:
    proxies = contextlib.ExitStack()

    def make(*, demo: bool = False, **settings: str) -> S3Stack:
        proxy = proxies.enter_context(TcpProxy(seaweedfs.s3_port).running())
        prefix = f"direct-{secrets.token_hex(4)}/"
        env = {
            **seaweedfs.env(),
            "WEIGHTPORT_STORAGE_URL": f"s3://{seaweedfs.bucket}/{prefix}",
            "WEIGHTPORT_S3_ENDPOINT": seaweedfs.endpoint,
            "WEIGHTPORT_S3_PUBLIC_ENDPOINT": proxy.base_url,
            **{f"WEIGHTPORT_{name.upper()}": value for name, value in settings.items()},
        }
        data = tmp_path / f"server-{secrets.token_hex(3)}"
        server = server_factory(data, demo=demo, extra_env=env).start()
        return S3Stack(server, seaweedfs, prefix, proxy, proxies)

    with proxies:
        yield make


def test_downloads_are_presigned_store_urls_for_the_public_endpoint(
    s3_stack: Callable[..., S3Stack], tmp_path: Path
) -> None:
    stack = s3_stack()
    api, account, key = stack.account()
    files = model_files()
    urls = api.publish("m", files)
    assert set(urls) == set(files)
    for path, url in urls.items():
        assert url.startswith(f"{stack.public.base_url}/{stack.weed.bucket}/{stack.prefix}blobs/")
        assert sha(files[path]) in url and "X-Amz-Signature=" in url
        assert "X-Amz-Expires=900" in url  # s3_presign_ttl's short default
        assert httpx.get(url).content == files[path]
    ranged = httpx.get(urls["model.safetensors"], headers={"Range": "bytes=10-19"})
    assert ranged.status_code == 206 and ranged.content == files["model.safetensors"][10:20]

    # The official client gets the same URLs; weightport's downloader follows them (Range,
    # several connections, sha256 verified) without ever sending HEAD.
    sdk = Fireworks(api_key=key, account_id=account, base_url=stack.server.base_url)
    signed = sdk.models.get_download_endpoint("m").filename_to_signed_urls or {}
    assert {p: httpx.get(u).content for p, u in signed.items()} == files
    source = FireworksModel(HttpSession(), ApiConfig(stack.server.base_url, key), account, "m")
    options = DownloadOptions(connections=4, part_size=256 * KiB, buffer_size=64 * KiB)
    result = download(source, tmp_path / "out", options)
    assert {f.verified for f in result.files} == {"sha256"}
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data


class CountingSource(FireworksModel):
    listings = 0

    def list_files(self) -> list[RemoteFile]:
        self.listings += 1
        return list(super().list_files())


def test_expired_presigned_urls_are_refreshed_by_the_downloader(
    s3_stack: Callable[..., S3Stack], tmp_path: Path
) -> None:
    stack = s3_stack(s3_presign_ttl="1")
    api, account, key = stack.account()
    files = model_files()
    api.publish("m", files)
    stack.public.rate = 400 * KiB  # ~8 s in all: the 1 s URLs expire mid-download
    session = HttpSession()
    source = CountingSource(session, ApiConfig(stack.server.base_url, key), account, "m")
    try:
        download(source, tmp_path / "out", DownloadOptions(connections=2, part_size=64 * KiB))
    finally:
        session.close()
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data
    assert source.listings >= 2


def test_uploads_are_presigned_puts_hashed_at_validate(s3_stack: Callable[..., S3Stack]) -> None:
    stack = s3_stack()
    api, _, _ = stack.account()
    files = model_files()
    assert api.create("m", kind="HF_BASE_MODEL").status_code == 200
    urls = api.upload_urls("m", {p: len(d) for p, d in files.items()})
    for url in urls.values():
        assert url.startswith(f"{stack.public.base_url}/{stack.weed.bucket}/{stack.prefix}staging/")
    for path, url in urls.items():
        # What the Fireworks docs send; S3 ignores the GCS header.
        headers = {
            "Content-Type": "application/octet-stream",
            "x-goog-content-length-range": f"{len(files[path])},{len(files[path])}",
        }
        assert httpx.put(url, content=files[path], headers=headers).status_code == 200
    assert stack.keys("blobs/") == []  # nothing is a blob before it is hashed
    assert len(stack.keys("staging/")) == len(files)

    validated = api.validate("m")
    assert validated.status_code == 200, validated.text
    assert stack.keys("staging/") == []
    assert stack.keys("blobs/") == sorted(f"blobs/{sha(d)}" for d in files.values())
    body = api.download_urls("m")
    assert body["filenameToSha256"] == {p: sha(d) for p, d in files.items()}

    # The same bytes under another model are stored once.
    api.publish("again", files)
    assert stack.keys("blobs/") == sorted(f"blobs/{sha(d)}" for d in files.values())


def test_a_wrong_or_missing_upload_is_not_made_ready(s3_stack: Callable[..., S3Stack]) -> None:
    stack = s3_stack()
    api, _, _ = stack.account()
    assert api.create("m", kind="HF_BASE_MODEL", baseModelDetails={}).status_code == 200
    urls = api.upload_urls("m", {"config.json": 23, "model.safetensors": 10})
    assert httpx.put(urls["config.json"], content=b'{"model_type": "llama"}').status_code == 200
    missing = api.validate("m")
    assert missing.status_code == 400
    assert missing.json()["code"] == 9
    assert "not uploaded yet: model.safetensors" in missing.json()["message"]

    assert httpx.put(urls["model.safetensors"], content=b"eleven byte").status_code == 200
    wrong = api.validate("m")
    assert wrong.status_code == 400
    assert "11 bytes arrived, but 10 were declared" in wrong.json()["message"]
    assert api.http.get(f"{api.base}/m").json()["state"] == "UPLOADING"

    # Upload again (a fresh URL for the same declaration) and it becomes READY.
    urls = api.upload_urls("m", {"config.json": 23, "model.safetensors": 10})
    assert list(urls) == ["model.safetensors"]  # config.json already landed
    assert httpx.put(urls["model.safetensors"], content=b"ten bytes!").status_code == 200
    assert api.validate("m").status_code == 200


def test_files_past_the_single_put_limit_go_through_weightport(
    s3_stack: Callable[..., S3Stack], tmp_path: Path
) -> None:
    # S3's smallest multipart part is 5 MiB, so that is the lowest useful limit.
    stack = s3_stack(s3_max_put_size=str(5 << 20))
    api, account, key = stack.account()
    files = {"config.json": b"{}", "big.bin": secrets.token_bytes(12 << 20)}
    assert api.create("m", kind="CUSTOM_MODEL").status_code == 200
    urls = api.upload_urls("m", {p: len(d) for p, d in files.items()})
    assert urls["big.bin"].startswith(stack.server.base_url + "/files/")  # proxied, multipart
    assert urls["config.json"].startswith(stack.public.base_url)  # presigned
    for path, url in urls.items():
        assert httpx.put(url, content=files[path], timeout=120).status_code == 200
    assert api.validate("m").status_code == 200
    assert stack.keys("tmp/") == [] and stack.keys("staging/") == []
    source = FireworksModel(HttpSession(), ApiConfig(stack.server.base_url, key), account, "m")
    download(source, tmp_path / "out", DownloadOptions(connections=4, part_size=1 << 20))
    assert (tmp_path / "out" / "big.bin").read_bytes() == files["big.bin"]


def test_proxy_setting_keeps_bytes_flowing_through_weightport(
    s3_stack: Callable[..., S3Stack], tmp_path: Path
) -> None:
    stack = s3_stack(s3_proxy="true")
    api, account, key = stack.account()
    files = model_files()
    assert api.create("m", kind="HF_BASE_MODEL").status_code == 200
    upload_urls = api.upload_urls("m", {p: len(d) for p, d in files.items()})
    assert all(u.startswith(stack.server.base_url + "/files/") for u in upload_urls.values())
    for path, url in upload_urls.items():
        assert httpx.put(url, content=files[path]).status_code == 200
    assert api.validate("m").status_code == 200
    urls = api.download_urls("m")["filenameToSignedUrls"]
    assert all(u.startswith(stack.server.base_url + "/files/") for u in urls.values())
    head = httpx.head(urls["model.safetensors"])  # weightport's URLs answer HEAD too
    assert head.status_code == 200
    assert head.headers["content-length"] == str(len(files["model.safetensors"]))
    source = FireworksModel(HttpSession(), ApiConfig(stack.server.base_url, key), account, "m")
    download(source, tmp_path / "out", DownloadOptions(connections=2, part_size=256 * KiB))
    for path, data in files.items():
        assert (tmp_path / "out" / path).read_bytes() == data


def test_orphaned_staging_objects_are_swept_at_start(s3_stack: Callable[..., S3Stack]) -> None:
    stack = s3_stack(staging_max_age="1")
    api, _, _ = stack.account()
    assert api.create("m", kind="CUSTOM_MODEL").status_code == 200
    (url,) = api.upload_urls("m", {"a.bin": 3}).values()
    assert httpx.put(url, content=b"abc").status_code == 200  # never validated
    assert len(stack.keys("staging/")) == 1
    stack.server.stop()
    time.sleep(2.5)  # older than staging_max_age (S3 times have 1 s resolution)
    stack.server.start()
    assert stack.keys("staging/") == []


def test_validate_answers_still_working_while_hashing_then_lands(
    seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with no wait: the first validate reports the hashing as still running
    (FAILED_PRECONDITION + Retry-After); once done, the next one lands the file."""
    import asyncio
    import json

    from weightport.catalog import accounts, registry, uploads
    from weightport.catalog.db import Catalog
    from weightport.errors import StillWorking
    from weightport.server.envelopes import Dialect, error_response
    from weightport.services.staged_uploads import StagedLanding, land_staged, staging_name
    from weightport.storage.s3 import S3BlobStore, S3Connection, S3Location

    for name, value in seaweedfs.env().items():
        monkeypatch.setenv(name, value)
    store = S3BlobStore(
        S3Location(seaweedfs.bucket, f"landing-{secrets.token_hex(4)}/"),
        S3Connection(endpoint=seaweedfs.endpoint),
        max_put_size=5 << 30,
    )
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    data = secrets.token_bytes(64 * KiB)

    def declare(session: Any) -> str:
        accounts.ensure_account(session, "a")
        model = registry.create_model(session, "a", "m", {"kind": "CUSTOM_MODEL"})
        (file,) = uploads.declare_files(session, "a", "m", {"w.bin": len(data)})
        return staging_name("a", "m", model.created_at, file.path, file.generation)

    name = catalog.call(declare)
    httpx.put(store.presign_put(name, expires_in=60), content=data).raise_for_status()
    landing = StagedLanding()
    with pytest.raises(StillWorking) as busy:
        asyncio.run(land_staged(catalog, store, landing, "a", "m", wait_s=0))
    answer = error_response(busy.value, Dialect.FIREWORKS)
    assert answer.status == 400 and answer.headers["Retry-After"] == "2"
    assert json.loads(answer.text or "")["code"] == 9
    asyncio.run(land_staged(catalog, store, landing, "a", "m", wait_s=60))
    model = catalog.call(lambda s: registry.get_model(s, "a", "m"))
    assert [(f.path, f.sha256) for f in model.files] == [("w.bin", sha(data))]
    assert store.staged_size(name) is None
    landing.close()
    catalog.close()
    store.close()


def test_cached_archives_are_served_by_redirect_to_the_store(
    s3_stack: Callable[..., S3Stack], tmp_path: Path
) -> None:
    stack = s3_stack(demo=True, archive_prebuild="true")
    server = stack.server
    ft_id = demo_job_of(server)
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {server.admin_key}"}
    ) as client:
        assert wait_for_build(client, ft_id, "adapter")["state"] == "ready"
        query = f"/v1/finetune/download?ft_id={ft_id}&checkpoint=adapter"
        redirect = client.get(query, headers={"Range": "bytes=0-1"})
        assert redirect.status_code == 302
        location = redirect.headers["location"]
        assert location.startswith(f"{stack.public.base_url}/{stack.weed.bucket}/{stack.prefix}")
        stored = httpx.get(location)
        cached = stored.content
        # Named for browsers (the console links here too); Python clients ignore it.
        assert stored.headers["content-disposition"].startswith('attachment; filename="')
        assert stored.headers["content-disposition"].endswith('-adapter.tar.zst"')
        assert client.head(query).status_code == 200  # HEAD is answered here
    assert archive_files(cached)  # a real archive

    # The SDK follows the redirect (dropping the key on the way to another origin).
    with Together(api_key=server.admin_key, base_url=server.base_url) as sdk:
        assert sdk.fine_tuning.content(ft_id=ft_id, checkpoint="adapter").read() == cached
    # The CLI probes with Range: bytes=0-1 and reads the total from the store's answer.
    out = tmp_path / "adapter.tar.zst"
    result = run_cli(server, tmp_path, ft_id, "-c", "adapter", "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_bytes() == cached
    # The audit log saw the URLs it handed out (the bytes went from the store): one record.
    server.stop()
    catalog = server.catalog()
    records = catalog.call(lambda s: audit.list_records(s, audit.AuditQuery(key_id=None)).records)
    catalog.close()
    (grant,) = [r for r in records if r.resource == ft_id and r.kind == "adapter"]
    assert grant.action == audit.URLS and grant.requests >= 3 and grant.bytes == 0


def weightport_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weightport", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("target", ["s3", "local"])
def test_finetunes_import_in_place_from_another_bucket(
    s3_stack: Callable[..., S3Stack],
    server_factory: Callable[..., LiveServer],
    seaweedfs: SeaweedFS,
    tmp_path: Path,
    target: str,
) -> None:
    # A training run's checkpoint folder in another bucket of the same S3 service.
    runs = f"runs-{secrets.token_hex(3)}"
    seaweedfs.create_bucket(runs)
    client: Any = seaweedfs.client()
    adapter = demo.demo_adapter_files(7)
    for name, body in adapter.items():
        client.put_object(Bucket=runs, Key=f"job-1/step-7/{name}", Body=body)
    client.put_object(Bucket=runs, Key="job-1/step-7/.hidden", Body=b"skipped")

    if target == "s3":
        stack = s3_stack(demo=True)
        server = stack.server
    else:
        server = server_factory(tmp_path / "local", extra_env=seaweedfs.env()).start()
    env = {**server.extra_env, "WEIGHTPORT_S3_ENDPOINT": seaweedfs.endpoint}
    data = ["--data-dir", str(server.data_dir)]
    source = f"s3://{runs}/job-1/step-7"
    imported = weightport_cli(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--final", f"7={source}",
        "--suffix", "in-place", *data, env=env,
    )  # fmt: skip
    assert imported.returncode == 0, imported.stderr
    ft_id = imported.stdout.strip()
    if target == "s3":
        for body in adapter.values():
            assert f"blobs/{sha(body)}" in stack.keys("blobs/")
        assert not (server.data_dir / "store").exists()
    found = client.list_objects_v2(Bucket=runs, Prefix="job-1/")["Contents"]
    assert len(found) == len(adapter) + 1  # the source is left as it was

    response = httpx.get(
        f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=adapter",
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=60,
    )
    assert response.status_code == 200
    files = {name.split("/", 1)[1]: body for name, body in archive_files(response.content).items()}
    assert files == adapter

    empty = weightport_cli(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--final",
        f"7=s3://{runs}/nothing-here", *data, env=env,
    )  # fmt: skip
    assert empty.returncode == 1
    assert (
        empty.stderr.strip().splitlines()[-1] == f"Error: s3://{runs}/nothing-here/ holds no files"
    )


def test_models_push_imports_an_allowed_s3_folder_in_place(
    s3_stack: Callable[..., S3Stack], seaweedfs: SeaweedFS
) -> None:
    runs = f"runs-{secrets.token_hex(3)}"
    seaweedfs.create_bucket(runs)
    client: Any = seaweedfs.client()
    files = model_files()
    for path, body in files.items():
        client.put_object(Bucket=runs, Key=f"allowed/model-a/{path}", Body=body)
    stack = s3_stack(s3_import_prefixes=f"s3://{runs}/allowed/")
    api, account, key = stack.account()
    target = ["--base-url", stack.server.base_url, "--api-key", key, "--account", account]

    pushed = weightport_cli(
        "models", "push", f"s3://{runs}/allowed/model-a", "--model", "imported", *target, env={}
    )
    assert pushed.returncode == 0, pushed.stderr
    assert "READY (imported from s3://" in pushed.stdout
    body = api.download_urls("imported")
    assert body["filenameToSha256"] == {p: sha(d) for p, d in files.items()}
    assert {p: httpx.get(u).content for p, u in body["filenameToSignedUrls"].items()} == files
    for data in files.values():
        assert f"blobs/{sha(data)}" in stack.keys("blobs/")

    # The store's own bucket (every account's blobs) and anything else outside the allowed
    # prefixes is refused, in one line.
    for uri in (f"s3://{seaweedfs.bucket}/{stack.prefix}blobs", f"s3://{runs}/other"):
        refused = weightport_cli("models", "push", uri, "--model", "nope", *target, env={})
        assert refused.returncode == 1
        assert refused.stderr.strip().splitlines()[-1] == (
            f"Error: HTTP 400: {S3Location.parse(uri)} is not under an import prefix this "
            "server allows"
        )


def test_imports_over_http_are_off_unless_prefixes_are_set(
    s3_stack: Callable[..., S3Stack],
) -> None:
    stack = s3_stack()
    api, _, _ = stack.account()
    assert api.create("m", kind="CUSTOM_MODEL").status_code == 200
    answer = api.http.post(f"{api.base}/m:import", json={"awsS3Source": {"s3Uri": "s3://x/y"}})
    assert answer.status_code == 400
    assert answer.json()["code"] == 9
    assert "s3_import_prefixes is empty" in answer.json()["message"]


def test_a_declared_sha256_decides_what_lands_from_staging(
    s3_stack: Callable[..., S3Stack],
) -> None:
    stack = s3_stack()
    api, _, _ = stack.account()
    assert api.create("m", kind="CUSTOM_MODEL").status_code == 200
    good, other = b"declared bytes", b"imposter bytes"
    declared = api.http.post(
        f"{api.base}/m:getUploadEndpoint",
        json={"filenameToSize": {"w.bin": len(good)}, "filenameToSha256": {"w.bin": sha(good)}},
    )
    (url,) = declared.json()["filenameToSignedUrls"].values()
    assert url.startswith(stack.public.base_url)  # presigned: the store cannot check the hash
    assert httpx.put(url, content=other).status_code == 200
    refused = api.validate("m")
    assert refused.status_code == 400
    assert f"but {sha(good)} was declared" in refused.json()["message"]
    assert stack.keys("staging/") == []  # dropped: the next poll does not hash them again
    assert api.http.get(f"{api.base}/m").json()["state"] == "UPLOADING"
    assert httpx.put(url, content=good).status_code == 200
    assert api.validate("m").status_code == 200
    assert api.download_urls("m")["filenameToSha256"] == {"w.bin": sha(good)}
