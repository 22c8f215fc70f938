"""The downloader against the real ``weightport serve`` (stage 2).

Same flows as tests/test_client_download.py, but the server is the real one: its signed
URLs (also when they expire), its Range/ETag answers, its archives (stored and merged LoRA),
a kill and restart of the server mid-download. A throttling TCP proxy in front makes
downloads slow enough to interrupt and to outlive a one-second URL lifetime.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.tcp_proxy import TcpProxy
from weightport import demo
from weightport.cli.download import download_group
from weightport.client import (
    DownloadOptions,
    FineTuneRef,
    FireworksModel,
    HttpSession,
    ProgressSnapshot,
    RemoteFile,
    TogetherCheckpoint,
    download,
)
from weightport.client.sources import ApiConfig

KiB = 1024
SMALL = DownloadOptions(connections=4, part_size=64 * KiB, buffer_size=16 * KiB)


def model_files(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    weights = {"w": rng.standard_normal((384, 1024), dtype=np.float32)}  # 1.5 MiB
    return {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": save(weights),
        "tokenizer/tokenizer.json": rng.bytes(100 * KiB),
    }


def publish(server: LiveServer, files: dict[str, bytes]) -> tuple[str, str]:
    """A fresh account holding model ``weights``; returns (account, key)."""
    account = f"dl-{secrets.token_hex(3)}"
    key = server.new_account(account)
    api = FireworksApi(server.base_url, account, key)
    api.publish("weights", files)
    api.close()
    return account, key


class CountingSource(FireworksModel):
    """Counts listings, i.e. how often fresh signed URLs were fetched."""

    listings = 0

    def list_files(self) -> Sequence[RemoteFile]:
        self.listings += 1
        return super().list_files()


def _assert_tree(dest: Path, files: dict[str, bytes]) -> None:
    found = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert found == set(files)
    for relpath, data in files.items():
        assert (dest / relpath).read_bytes() == data, relpath


@pytest.fixture(scope="module")
def published(live_server: LiveServer) -> tuple[str, str, dict[str, bytes]]:
    files = model_files(1)
    account, key = publish(live_server, files)
    return account, key, files


def test_model_download_from_the_real_server(
    live_server: LiveServer, published: tuple[str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    account, key, files = published
    source = FireworksModel(HttpSession(), ApiConfig(live_server.base_url, key), account, "weights")
    result = download(source, tmp_path / "out", SMALL)
    _assert_tree(tmp_path / "out", files)
    assert {f.verified for f in result.files} == {"sha256"}


def test_interrupted_download_resumes_through_a_slow_link(
    live_server: LiveServer, published: tuple[str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    account, key, files = published
    out = tmp_path / "out"

    def interrupt(snapshot: ProgressSnapshot) -> None:
        if snapshot.done >= 300 * KiB:
            raise KeyboardInterrupt

    with TcpProxy(live_server.port, rate=400 * KiB).running() as proxy:
        source = FireworksModel(HttpSession(), ApiConfig(proxy.base_url, key), account, "weights")
        with pytest.raises(KeyboardInterrupt):
            download(source, out, SMALL, interrupt)
        proxy.rate = None
        result = download(source, out, SMALL)
    _assert_tree(out, files)
    # Nothing on disk at the interrupt is fetched again: it is resumed, or (a file that was
    # already finished then) skipped.
    assert result.downloaded_bytes <= sum(map(len, files.values())) - 300 * KiB


def test_expiring_signed_urls_are_refreshed(
    server_factory: type[LiveServer], tmp_path: Path
) -> None:
    server = server_factory(
        tmp_path / "ttl", demo=False, extra_env={"WEIGHTPORT_DOWNLOAD_URL_TTL": "1"}
    ).start()
    files = model_files(2)
    account, key = publish(server, files)
    with TcpProxy(server.port, rate=250 * KiB).running() as proxy:  # ~3 s in all
        source = CountingSource(HttpSession(), ApiConfig(proxy.base_url, key), account, "weights")
        download(source, tmp_path / "out", DownloadOptions(connections=2, part_size=64 * KiB))
    _assert_tree(tmp_path / "out", files)
    assert source.listings >= 2


def test_download_survives_a_server_restart(
    server_factory: type[LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "restart", demo=False).start()
    files = model_files(3)
    account, key = publish(server, files)
    progress: list[int] = []
    failures: list[BaseException] = []
    with TcpProxy(server.port, rate=200 * KiB).running() as proxy:
        source = FireworksModel(HttpSession(), ApiConfig(proxy.base_url, key), account, "weights")

        def run() -> None:
            try:
                download(source, tmp_path / "out", SMALL, lambda s: progress.append(s.done))
            except BaseException as exc:
                failures.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60  # hang guard only
        while (not progress or progress[-1] < 200 * KiB) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert progress[-1] < sum(map(len, files.values())), "killed before the end"
        server.kill()
        proxy.cut()
        server.start()
        proxy.rate = None
        thread.join()
    assert not failures, failures
    _assert_tree(tmp_path / "out", files)


def _demo_fine_tune(server: LiveServer) -> str:
    jobs = httpx.get(
        f"{server.base_url}/v1/fine-tunes", headers={"Authorization": f"Bearer {server.admin_key}"}
    ).json()["data"]
    ft_id: str = next(j["id"] for j in jobs if j.get("suffix") == demo.DEMO_SUFFIX)
    return ft_id


def test_cli_fine_tune_adapter_step_extracts(live_server: LiveServer, tmp_path: Path) -> None:
    ft_id = _demo_fine_tune(live_server)
    step = demo.DEMO_STEPS[0]
    out = tmp_path / "adapter"
    result = CliRunner().invoke(
        download_group,
        [
            "finetune", f"{ft_id}:{step}", "-c", "adapter", "-o", str(out), "--extract",
            "--strip-components", "1", "--base-url", live_server.base_url,
            "--api-key", live_server.admin_key, "--quiet",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _assert_tree(out, demo.demo_adapter_files(step))


def test_merged_archive_resumes_to_identical_bytes(live_server: LiveServer, tmp_path: Path) -> None:
    ft_id = _demo_fine_tune(live_server)
    api = ApiConfig(live_server.base_url, live_server.admin_key)
    whole = httpx.get(
        f"{api.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=merged",
        headers={"Authorization": f"Bearer {api.api_key}"},
        timeout=120,
    )
    assert whole.status_code == 200

    def interrupt(snapshot: ProgressSnapshot) -> None:
        if snapshot.done >= 64 * KiB:
            raise KeyboardInterrupt

    with TcpProxy(live_server.port, rate=50 * KiB).running() as proxy:  # ~1 s in all
        slow = ApiConfig(proxy.base_url, api.api_key)
        source = TogetherCheckpoint(HttpSession(), slow, FineTuneRef(ft_id, None)).resolve()
        with pytest.raises(KeyboardInterrupt):
            download(source, tmp_path, SMALL, interrupt)
        proxy.rate = None
        result = download(source, tmp_path, SMALL)
    (only,) = result.files
    assert only.resumed_bytes >= 64 * KiB and source.checkpoint == "merged"
    assert only.path.read_bytes() == whole.content
