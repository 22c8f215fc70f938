"""``weightport gc`` and the collection inside ``serve``, against real servers on every
stack (local store + SQLite; S3 on SeaweedFS): deleted models are reclaimed, shared blobs
and uploads in flight survive, dry runs change nothing, two collections at once are safe,
and a replayed upload URL stores nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.raw_http import ResponseReader, connect
from tests.stacks import STACKS, stack_env
from weightport.config import load_settings
from weightport.storage.base import BlobStore
from weightport.storage.factory import open_store

GUARD_S = 60.0
STAGING_MAX_AGE_S = 1
SHARED = b'{"model_type": "llama", "shared": true}'


class Stack:
    """A server of one stack, the store it uses, and ``weightport gc`` pointed at both."""

    def __init__(self, server: LiveServer, env: dict[str, str], store: BlobStore) -> None:
        self.server = server
        self.env = env
        self.store = store
        self.api = FireworksApi(server.base_url, "admin", server.admin_key)

    def gc(
        self, *args: str, staging_max_age: int | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env}
        if staging_max_age is not None:
            env["WEIGHTPORT_STAGING_MAX_AGE"] = str(staging_max_age)
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "weightport",
                "gc",
                "--data-dir",
                str(self.server.data_dir),
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )

    def gc_json(self, *args: str, staging_max_age: int | None = None) -> dict[str, object]:
        result = self.gc("--json", *args, staging_max_age=staging_max_age)
        assert result.returncode == 0, result.stderr
        report: dict[str, object] = json.loads(result.stdout)
        return report

    def publish(self, model_id: str, files: dict[str, bytes]) -> dict[str, str]:
        """Publish (with the shared config.json unless given); returns path -> blob key."""
        self.api.publish(model_id, {"config.json": SHARED, **files})
        digests: dict[str, str] = self.api.download_urls(model_id)["filenameToSha256"]
        return digests

    def delete(self, model_id: str) -> None:
        assert self.api.http.delete(f"{self.api.base}/{model_id}").status_code == 200

    def stored(self, key: str) -> bool:
        return self.store.head(key) is not None


@pytest.fixture(params=STACKS)
def stack(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Stack]:
    env = {**stack_env(request.param, request), "WEIGHTPORT_GC_INTERVAL": "0"}
    for name, value in env.items():  # the test's own view of the store needs them too
        monkeypatch.setenv(name, value)
    server = LiveServer(tmp_path / "data", extra_env=env, demo=False).start()
    store = open_store(load_settings({"data_dir": server.data_dir}))
    here = Stack(server, env, store)
    yield here
    here.api.close()
    server.stop()


def test_a_deleted_models_blobs_are_reclaimed_shared_ones_stay(stack: Stack) -> None:
    a = stack.publish("a", {"config.json": SHARED, "w.bin": os.urandom(300_000)})
    b = stack.publish("b", {"config.json": SHARED, "w.bin": os.urandom(200_000)})
    assert a["config.json"] == b["config.json"]
    stack.delete("a")

    preview = stack.gc_json("--dry-run", "--grace", "0")
    assert [d["sha256"] for d in preview["deleted"]] == [a["w.bin"]]  # type: ignore[index,union-attr]
    assert stack.stored(a["w.bin"])  # a dry run deletes nothing

    report = stack.gc_json("--grace", "0")
    assert report["deleted"] == [{"sha256": a["w.bin"], "size": 300_000}]
    assert not stack.stored(a["w.bin"])
    assert stack.stored(b["config.json"]) and stack.stored(b["w.bin"])
    for path, url in stack.api.download_urls("b")["filenameToSignedUrls"].items():
        got = httpx.get(url, timeout=GUARD_S)
        assert got.status_code == 200 and len(got.content) > 0, path


def test_the_grace_period_is_honoured(stack: Stack) -> None:
    a = stack.publish("a", {"w.bin": os.urandom(50_000)})
    stack.delete("a")
    first = stack.gc_json()  # default grace (a day): marked only
    assert first["deleted"] == [] and first["waiting"] == 2  # w.bin and config.json
    assert stack.stored(a["w.bin"])
    plain = stack.gc()
    assert "wait out the grace period" in plain.stdout


def put_head(url: str, size: int) -> tuple[int, bytes]:
    """The port and the request head of a PUT of ``size`` bytes to ``url`` (weightport's own
    upload URL, or a presigned PUT to the store, whose signature covers the host)."""
    parts = urlsplit(url)
    assert parts.port is not None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"PUT {target} HTTP/1.1", f"Host: {parts.netloc}", f"Content-Length: {size}"]
    return parts.port, ("\r\n".join([*lines, "Connection: close"]) + "\r\n\r\n").encode()


def test_an_upload_in_flight_during_gc_survives(stack: Stack) -> None:
    # Model a's bytes become garbage; model c uploads the very same bytes, slowly, while a
    # collection deletes them: the upload still lands whole (through weightport, or PUT
    # straight to the store's staging area and landed at validateUpload).
    payload = os.urandom(400_000)
    a = stack.publish("a", {"w.bin": payload})
    stack.delete("a")
    assert stack.api.create("c", kind="CUSTOM_MODEL").status_code == 200
    url = stack.api.upload_urls("c", {"w.bin": len(payload)})["w.bin"]
    port, head = put_head(url, len(payload))
    with connect(port) as sock:
        sock.sendall(head + payload[:100_000])
        report = stack.gc_json("--grace", "0")
        assert {"sha256": a["w.bin"], "size": len(payload)} in report["deleted"]  # type: ignore[operator]
        sock.sendall(payload[100_000:])
        assert ResponseReader(sock).response().status == 200
    assert stack.api.validate("c").status_code == 200
    got = httpx.get(stack.api.download_urls("c")["filenameToSignedUrls"]["w.bin"])
    assert got.content == payload
    assert stack.gc_json("--grace", "0")["deleted"] == []


def test_two_collections_at_once_are_safe(stack: Stack) -> None:
    garbage = set()
    for n in range(6):
        keys = stack.publish(f"m{n}", {"w.bin": os.urandom(20_000 + n)})
        garbage.add(keys["w.bin"])
        stack.delete(f"m{n}")
    kept = stack.publish("kept", {"w.bin": os.urandom(10_000)})["w.bin"]
    env = {**os.environ, **stack.env}
    command = [sys.executable, "-m", "weightport", "gc", "--json", "--grace", "0"]
    command += ["--data-dir", str(stack.server.data_dir)]
    runs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    reports = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        reports.append(json.loads(out))
    deleted = [d["sha256"] for r in reports for d in r["deleted"]]
    assert sorted(deleted) == sorted(garbage)  # each exactly once, between the two
    assert not any(stack.stored(key) for key in garbage)
    assert stack.stored(kept)


def test_a_replayed_upload_url_stores_nothing(stack: Stack) -> None:
    payload = os.urandom(100_000)
    assert stack.api.create("r", kind="CUSTOM_MODEL").status_code == 200
    url = stack.api.upload_urls("r", {"w.bin": len(payload)})["w.bin"]
    assert httpx.put(url, content=payload).status_code == 200
    assert stack.api.validate("r").status_code == 200
    blobs = {info.key for info in stack.store.list()}
    direct = not url.startswith(stack.server.base_url)  # a presigned PUT to the store
    for _ in range(5):
        replay = httpx.put(url, content=os.urandom(len(payload)))
        if direct:
            # The store takes it (a signature cannot be withdrawn), into staging only.
            assert replay.status_code == 200
        else:
            assert replay.status_code == 400
            assert "READY" in replay.json()["message"]
    assert {info.key for info in stack.store.list()} == blobs
    assert stack.api.validate("r").status_code == 200  # a READY model lands nothing more
    assert {info.key for info in stack.store.list()} == blobs
    time.sleep(STAGING_MAX_AGE_S + 1)  # the leftover's age, not a speed limit
    report = stack.gc_json("--grace", "0", staging_max_age=STAGING_MAX_AGE_S)
    assert report["deleted"] == []
    assert report["temp_removed"] == (1 if direct else 0)
    got = httpx.get(stack.api.download_urls("r")["filenameToSignedUrls"]["w.bin"])
    assert got.content == payload


def test_serve_collects_on_its_schedule(
    tmp_path: Path, server_factory: Callable[..., LiveServer]
) -> None:
    env = {"WEIGHTPORT_GC_INTERVAL": "1", "WEIGHTPORT_GC_GRACE": "0"}
    server = server_factory(tmp_path / "data", extra_env=env, demo=False).start()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    api.publish("a", {"config.json": SHARED, "w.bin": os.urandom(10_000)})
    key = api.download_urls("a")["filenameToSha256"]["w.bin"]
    blob = server.data_dir / "store" / "blobs" / key[:2] / key[2:4] / key
    assert blob.exists()
    assert api.http.delete(f"{api.base}/a").status_code == 200
    api.close()
    deadline = time.monotonic() + GUARD_S
    while blob.exists():
        assert time.monotonic() < deadline, "serve never collected the deleted model's blob"
        time.sleep(0.2)
    server.stop()
    assert server.log_path is not None
    log = server.log_path.read_text()
    assert "garbage collection: deleted 2 unreferenced blob(s)" in log
    assert "Traceback" not in log
