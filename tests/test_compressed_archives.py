"""Compressed archives: built once in the background, progress in the job JSON, then served
from the cache with Range — decompressing to exactly the stored archive's tar."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import zstandard

from tests.archive_helpers import archive_files, wait_for_build
from tests.conftest import LiveServer


def test_build_then_serve_compressed(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "data", extra_env={"WEIGHTPORT_ARCHIVE_ENCODING": "compressed"}
    ).start()
    with httpx.Client(
        base_url=server.base_url,
        headers={"Authorization": f"Bearer {server.admin_key}"},
        timeout=60,
    ) as client:
        ft_id = client.get("/v1/fine-tunes").json()["data"][0]["id"]
        url = f"/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
        # First download: stored bytes while the compressed build is queued on demand.
        stored = client.get(url)
        assert stored.status_code == 200
        build = wait_for_build(client, ft_id, "merged")
        assert build["state"] == "ready", build
        assert build["done_bytes"] == build["total_bytes"] > 0
        compressed = client.get(url)
        assert compressed.status_code == 200
        assert compressed.headers["etag"] != stored.headers["etag"]
        assert len(compressed.content) == build["size"] < len(stored.content)
        # Same tar inside both encodings.
        decompress = zstandard.ZstdDecompressor()
        tar_of = lambda data: decompress.stream_reader(data, read_across_frames=True).read()  # noqa: E731
        assert tar_of(compressed.content) == tar_of(stored.content)
        assert archive_files(compressed.content) == archive_files(stored.content)
        path = tmp_path / "c.tar.zst"
        path.write_bytes(compressed.content)
        subprocess.run(["zstd", "-q", "-t", str(path)], check=True)
        subprocess.run(["tar", "--zstd", "-tf", str(path)], check=True, capture_output=True)
        # Range and resume on the cached build.
        total = len(compressed.content)
        probe = client.get(url, headers={"Range": "bytes=0-1"})
        assert probe.headers["content-range"] == f"bytes 0-1/{total}"
        tail = client.get(url, headers={"Range": f"bytes={total // 3}-"})
        assert tail.status_code == 206 and tail.content == compressed.content[total // 3 :]
        # A second request to build answers "already there".
        again = client.post(
            f"/weightport/v1/fine-tunes/{ft_id}/archives", json={"checkpoint": "merged"}
        )
        assert again.status_code == 202 and again.json()["queued"] is False


def test_prebuild_at_start_covers_every_checkpoint(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "data", extra_env={"WEIGHTPORT_ARCHIVE_PREBUILD": "true"}
    ).start()
    with httpx.Client(
        base_url=server.base_url, headers={"Authorization": f"Bearer {server.admin_key}"}
    ) as client:
        ft_id = client.get("/v1/fine-tunes").json()["data"][0]["id"]
        deadline = time.monotonic() + 120
        builds: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            builds = client.get(f"/v1/fine-tunes/{ft_id}").json()["weightport_archives"]
            if len(builds) == 4 and all(b["state"] == "ready" for b in builds):
                break
            time.sleep(0.2)
        assert sorted((b["step"], b["artifact"]) for b in builds) == [
            (10, "adapter"),
            (20, "adapter"),
            (30, "adapter"),
            (30, "merged"),
        ]
        assert all(b["state"] == "ready" for b in builds), builds
        served = client.get(f"/v1/finetune/download?ft_id={ft_id}&checkpoint_step=20")
        assert served.headers["etag"].endswith('.zst3"')
