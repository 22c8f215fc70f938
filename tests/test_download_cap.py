"""The per-account cap on computed downloads: the one past it is answered 429 with
Retry-After in the caller's envelope (Together JSON, the Hub's X-Error-* headers); other
accounts, HEAD and stored files are unaffected; the official together CLI and SDK see a rate
limit (the CLI retries only when asked)."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import together

from tests.conftest import LiveServer
from tests.merged_fine_tune import publish_merged_fine_tune
from tests.raw_http import request_head
from tests.tcp_proxy import TcpProxy
from tests.together_cli import CLI, cli_env

CAP = 2
GUARD_S = 60.0
DOWNLOAD = "/v1/finetune/download"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    env = {
        "WEIGHTPORT_MAX_COMPUTED_DOWNLOADS": str(CAP),
        "WEIGHTPORT_ARCHIVE_ENCODING": "stored",
    }
    live = LiveServer(tmp_path_factory.mktemp("cap") / "data", extra_env=env, demo=False)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def merged_url(server: LiveServer) -> str:
    ft_id = publish_merged_fine_tune(server.base_url, "admin", server.admin_key)
    return f"{server.base_url}{DOWNLOAD}?ft_id={ft_id}&checkpoint=merged"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def hold_slots(server: LiveServer, url: str) -> list[socket.socket]:
    """``CAP`` downloads that read nothing, so they keep their slots; returns once the
    server refuses one more."""
    path = url.removeprefix(server.base_url)
    held = []
    for _ in range(CAP):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(request_head("GET", path, auth(server.admin_key)))
        held.append(sock)
    deadline = time.monotonic() + GUARD_S
    while httpx.head(url, headers=auth(server.admin_key)).status_code == 200:
        # HEAD is never counted; a 2-byte GET is, and tells when both slots are taken.
        probe = httpx.get(url, headers={**auth(server.admin_key), "Range": "bytes=0-1"})
        if probe.status_code == 429:
            return held
        assert time.monotonic() < deadline, "the held downloads never took their slots"
        time.sleep(0.05)
    raise AssertionError("HEAD was refused")


def release(held: list[socket.socket], url: str, key: str) -> None:
    for sock in held:
        sock.close()
    deadline = time.monotonic() + GUARD_S
    while httpx.get(url, headers={**auth(key), "Range": "bytes=0-1"}).status_code == 429:
        assert time.monotonic() < deadline, "slots were not given back"
        time.sleep(0.05)


def test_the_download_past_the_cap_is_429_with_retry_after(
    server: LiveServer, merged_url: str
) -> None:
    other_key = server.new_account("other")
    other_job = publish_merged_fine_tune(server.base_url, "other", other_key, hidden=256)
    held = hold_slots(server, merged_url)
    try:
        refused = httpx.get(merged_url, headers=auth(server.admin_key))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert refused.headers["retry-after-ms"] == "5000"
        assert refused.headers["x-should-retry"] == "true"
        error = refused.json()["error"]
        assert error["type"] == "rate_limit_exceeded" and error["code"] == "rate_limited"
        assert "max_computed_downloads" in error["message"]
        # HEAD sends no body: never refused.
        assert httpx.head(merged_url, headers=auth(server.admin_key)).status_code == 200
        # Another account has its own slots.
        mine = httpx.get(
            f"{server.base_url}{DOWNLOAD}?ft_id={other_job}&checkpoint=merged",
            headers=auth(other_key),
        )
        assert mine.status_code == 200 and len(mine.content) > 256 * 256 * 8
    finally:
        release(held, merged_url, server.admin_key)
    assert httpx.get(merged_url, headers=auth(server.admin_key)).status_code == 200


def test_a_merged_shard_through_the_hub_counts_too(server: LiveServer, merged_url: str) -> None:
    ft_id = merged_url.split("ft_id=")[1].split("&")[0]
    shard = f"{server.base_url}/hf/admin/{ft_id}/resolve/main/model.safetensors"
    held = hold_slots(server, merged_url)
    try:
        refused = httpx.get(shard, headers=auth(server.admin_key))
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "5"
        assert refused.headers["x-error-code"] == "TooManyRequests"
        assert "max_computed_downloads" in refused.headers["x-error-message"]
        # A HEAD computes nothing, and files that are stored are not counted.
        assert httpx.head(shard, headers=auth(server.admin_key)).status_code == 200
        config = shard.replace("model.safetensors", "config.json")
        assert httpx.get(config, headers=auth(server.admin_key)).status_code == 200
    finally:
        release(held, merged_url, server.admin_key)
    whole = httpx.get(shard, headers=auth(server.admin_key), timeout=GUARD_S)
    assert whole.status_code == 200 and len(whole.content) > 60 << 20


def test_together_sdk_raises_rate_limit_error(server: LiveServer, merged_url: str) -> None:
    ft_id = merged_url.split("ft_id=")[1].split("&")[0]
    held = hold_slots(server, merged_url)
    try:
        with (
            together.Together(
                api_key=server.admin_key, base_url=server.base_url, max_retries=0
            ) as sdk,
            pytest.raises(together.RateLimitError) as caught,
        ):
            sdk.fine_tuning.content(ft_id=ft_id, checkpoint="merged").read()
        assert caught.value.status_code == 429
    finally:
        release(held, merged_url, server.admin_key)


def _cli(
    server: LiveServer, proxy: TcpProxy, home: Path, options: list[str], ft_id: str
) -> tuple[int, str, float]:
    env = {**cli_env(server, home), "TOGETHER_BASE_URL": proxy.base_url}
    began = time.monotonic()
    result = subprocess.run(
        [CLI, *options, "fine-tuning", "download", ft_id, "-o", str(home / "out.tar.zst")],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr, time.monotonic() - began


@pytest.mark.parametrize("retries", [0, 2])
def test_together_cli_on_429(
    server: LiveServer, merged_url: str, tmp_path: Path, retries: int
) -> None:
    ft_id = merged_url.split("ft_id=")[1].split("&")[0]
    held = hold_slots(server, merged_url)
    try:
        with TcpProxy(server.port).running() as proxy:
            options = ["--max-retries", str(retries)] if retries else []
            code, output, took = _cli(server, proxy, tmp_path, options, ft_id)
            sent = bytes(proxy.upstream).count(f"GET {DOWNLOAD}?".encode())
    finally:
        release(held, merged_url, server.admin_key)
    assert code == 1, output
    assert "Traceback" not in output
    # The CLI's default is no retry at all; asked to, it retries after Retry-After.
    assert sent == 1 + retries, output
    assert took >= retries * 5 * 0.9
    assert not (tmp_path / "out.tar.zst").exists()
