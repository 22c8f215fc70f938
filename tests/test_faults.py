"""Faults injected into a real server: ``kill -9`` at random moments while uploads, validations,
archive builds and downloads run, and a disk that fills up in the middle of an upload.

After every fault the server restarts and the invariants hold: no READY model serves other
bytes than were uploaded, nothing half-written is visible (no partial blob, no stuck build),
interrupted work can be redone, and the stored archive is byte-identical to what it was.

``WEIGHTPORT_FAULT_ROUNDS`` sets how many kills (default 4; docs/reliability.md has the longer
run); the moments are drawn from a seeded generator, printed so a failure can be replayed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.archive_helpers import archive_files
from tests.conftest import LiveServer, demo_job_of, fill
from tests.disk_helpers import assert_insufficient_storage
from tests.fw_helpers import FireworksApi

ROUNDS = int(os.environ.get("WEIGHTPORT_FAULT_ROUNDS", "4"))
SEED = int(os.environ.get("WEIGHTPORT_FAULT_SEED", "20261127"))
#: Seconds a build's claim lasts unrenewed (``archive_build_lease``).
LEASE = 2
CHUNK = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def slow_body(data: bytes, pause: float) -> Iterator[bytes]:
    for offset in range(0, len(data), CHUNK):
        time.sleep(pause)
        yield data[offset : offset + CHUNK]


@dataclass
class Ledger:
    """What the test sent: each model's files as the client knows them."""

    models: dict[str, dict[str, bytes]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def upload_model(api: FireworksApi, model_id: str, files: dict[str, bytes], pause: float) -> None:
    """Create (or re-declare) → slow PUTs → validate; connection errors end it quietly."""
    with contextlib.suppress(httpx.HTTPError):
        created = api.create(model_id, kind="CUSTOM_MODEL")
        assert created.status_code in (200, 409), created.text
        urls = api.upload_urls(model_id, {p: len(d) for p, d in files.items()})
        for path, url in urls.items():
            httpx.put(url, content=slow_body(files[path], pause), timeout=60)
        api.validate(model_id)


def read_with_ranges(url: str, size: int, rng: random.Random, headers: dict[str, str]) -> None:
    """Random ranged reads until the server goes away."""
    with contextlib.suppress(httpx.HTTPError), httpx.Client(timeout=30, headers=headers) as client:
        for _ in range(200):
            start = rng.randrange(size)
            client.get(url, headers={"Range": f"bytes={start}-"})


def check_ready_models(api: FireworksApi, ledger: Ledger) -> int:
    """Every READY model of the account serves exactly the bytes the ledger says were sent."""
    listed = api.http.get(api.base, params={"pageSize": 200}).json()["models"]
    checked = 0
    for model in listed:
        model_id = model["name"].rsplit("/", 1)[1]
        if model["state"] != "READY":
            continue
        body = api.download_urls(model_id)
        sent = ledger.models[model_id]
        assert set(body["filenameToSignedUrls"]) == set(sent), model_id
        for path, url in body["filenameToSignedUrls"].items():
            assert body["filenameToSha256"][path] == sha256(sent[path]), (model_id, path)
            assert sha256(httpx.get(url, timeout=60).content) == sha256(sent[path])
            checked += 1
    return checked


def wait_for_builds_to_settle(client: httpx.Client, ft_id: str) -> list[dict[str, Any]]:
    """The fine-tune's builds once none is pending or building (none stays stuck)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        builds: list[dict[str, Any]] = client.get(f"/v1/fine-tunes/{ft_id}").json()[
            "weightport_archives"
        ]
        if not [b for b in builds if b["state"] in ("pending", "building")]:
            return builds
        time.sleep(0.2)
    raise AssertionError(f"builds of {ft_id} stuck: {builds}")


def wait_for_archive(client: httpx.Client, ft_id: str, artifact: str) -> dict[str, Any]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        builds = client.get(f"/v1/fine-tunes/{ft_id}").json()["weightport_archives"]
        done = [b for b in builds if b["artifact"] == artifact and b["state"] == "ready"]
        if done:
            return done[0]
        time.sleep(0.2)
    raise AssertionError(f"no {artifact} build of {ft_id} became ready: {builds}")


@pytest.mark.slow
def test_kill_9_at_random_moments(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    print(f"fault seed {SEED}, {ROUNDS} rounds")
    # Short build leases: a build the kill interrupted is taken over by the restarted server
    # once its lease runs out (the killed process cannot hand it back).
    server = server_factory(
        tmp_path / "data", extra_env={"WEIGHTPORT_ARCHIVE_BUILD_LEASE": str(LEASE)}
    ).start()
    ft_id = demo_job_of(server)
    auth = {"Authorization": f"Bearer {server.admin_key}"}
    ledger = Ledger()
    # The uploads in an account of their own (admin holds the demo models).
    key = server.new_account("faults")
    api = FireworksApi(server.base_url, "faults", key)
    published = {"w.bin": os.urandom(16 * CHUNK)}
    ledger.models["published"] = published
    stable_url = api.publish("published", published, kind="CUSTOM_MODEL")["w.bin"]
    together = httpx.Client(base_url=server.base_url, headers=auth, timeout=60)
    archive_url = f"/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
    stored_archive = together.get(archive_url).content
    api.close()
    together.close()
    kills = 0

    for round_no in range(ROUNDS):
        api = FireworksApi(server.base_url, "faults", key)
        model_id = f"m{round_no}"
        files = {
            "config.json": b"{}",
            "a.bin": os.urandom(rng.randrange(4, 24) * CHUNK),
            "b.bin": os.urandom(rng.randrange(1, 8) * CHUNK),
        }
        ledger.models[model_id] = files
        workers = [
            threading.Thread(target=upload_model, args=(api, model_id, files, 0.02)),
            threading.Thread(
                target=read_with_ranges,
                args=(stable_url, len(published["w.bin"]), random.Random(round_no), {}),
            ),
            threading.Thread(
                target=read_with_ranges,
                args=(
                    f"{server.base_url}{archive_url}",
                    len(stored_archive),
                    random.Random(-round_no),
                    auth,
                ),
            ),
        ]
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(
                f"{server.base_url}/weightport/v1/fine-tunes/{ft_id}/archives",
                json={"checkpoint": rng.choice(["merged", "adapter"])},
                headers=auth,
            )
        for worker in workers:
            worker.start()
        time.sleep(rng.uniform(0.05, 1.5))
        server.kill()
        kills += 1
        for worker in workers:
            worker.join(60)
        api.close()

        server.start()
        api = FireworksApi(server.base_url, "faults", key)
        assert not any((server.data_dir / "store" / "tmp").iterdir()), "temp files survived"
        check_ready_models(api, ledger)
        with httpx.Client(base_url=server.base_url, headers=auth, timeout=60) as client:
            builds = wait_for_builds_to_settle(client, ft_id)
            assert all(b["state"] == "ready" for b in builds), builds
        # Whatever the kill interrupted can be redone, and then serves the same bytes.
        upload_model(api, model_id, files, 0)
        assert api.http.get(f"{api.base}/{model_id}").json()["state"] == "READY"
        api.close()

    with httpx.Client(base_url=server.base_url, headers=auth, timeout=60) as client:
        assert client.get(archive_url).status_code == 200
        client.post(f"/weightport/v1/fine-tunes/{ft_id}/archives", json={"checkpoint": "merged"})
        wait_for_archive(client, ft_id, "merged")
        compressed = client.get(archive_url).content
    assert archive_files(compressed) == archive_files(stored_archive)
    api = FireworksApi(server.base_url, "faults", key)
    assert check_ready_models(api, ledger) == 1 + 3 * ROUNDS
    api.close()
    assert kills == ROUNDS
    assert server.log_path is not None
    assert "Traceback" not in server.log_path.read_text()


def test_disk_fills_during_an_upload(
    server_factory: Callable[..., LiveServer], small_disk: Path
) -> None:
    server = server_factory(small_disk, demo=False).start()
    api = FireworksApi(server.base_url, "admin", server.admin_key)
    payload = os.urandom(24 * CHUNK)
    assert api.create("big", kind="CUSTOM_MODEL").status_code == 200
    url = api.upload_urls("big", {"w.bin": len(payload)})["w.bin"]
    # Leave ~8 MiB: the upload starts fine and meets the full disk a third of the way in.
    filler = fill(small_disk)
    with filler.open("r+b") as fh:
        fh.truncate(max(0, filler.stat().st_size - 8 * CHUNK))
    assert_insufficient_storage(httpx.put(url, content=slow_body(payload, 0), timeout=60))
    assert not any((small_disk / "store" / "tmp").iterdir())
    assert api.http.get(f"{api.base}/big").json()["state"] == "UPLOADING"
    assert api.validate("big").status_code == 400
    # The refused upload gave its space back; fill it, and the catalog refuses writes the
    # same way, leaving nothing half-done.
    fill(small_disk)
    for attempt in range(500):
        created = api.create(f"c{attempt}", kind="CUSTOM_MODEL")
        if created.status_code != 200:
            assert_insufficient_storage(created)
            assert api.http.get(f"{api.base}/c{attempt}").status_code == 404
            break
    else:
        pytest.fail("500 creates on a full disk all succeeded")

    filler.unlink()
    assert httpx.put(url, content=payload, timeout=60).status_code == 200
    assert api.validate("big").status_code == 200
    signed = api.download_urls("big")
    assert signed["filenameToSha256"]["w.bin"] == sha256(payload)
    assert httpx.get(signed["filenameToSignedUrls"]["w.bin"], timeout=60).content == payload
    api.close()
    server.stop()
    assert server.log_path is not None
    assert "Traceback" not in server.log_path.read_text()
