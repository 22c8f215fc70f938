"""The together CLI's resume after a real mid-stream connection drop, on a > 10 MiB archive,
and a Full fine-tune registered over HTTP from uploaded models."""

from __future__ import annotations

import hashlib
import secrets
import subprocess
from pathlib import Path

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.archive_helpers import archive_files, digests, strip_top
from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from tests.tcp_proxy import TcpProxy
from tests.together_cli import CLI, cli_env

SHAPES = {"model.embed_tokens.weight": (4096, 1024), "lm_head.weight": (2048, 1024)}


def weights(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    tensors = {name: rng.standard_normal(shape, dtype=np.float32) for name, shape in SHAPES.items()}
    return {
        "config.json": b'{"model_type": "llama", "hidden_size": 1024}',
        "model.safetensors": save(tensors),
    }


def register_full(server: LiveServer, key: str, step: int, model: str) -> httpx.Response:
    """Register a Full fine-tune of "base" whose final checkpoint is ``model``, over HTTP."""
    return httpx.post(
        f"{server.base_url}/weightport/v1/fine-tunes",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "base_model": "base",
            "training_type": "Full",
            "checkpoints": [{"step": step, "kind": "final", "model": model}],
        },
    )


@pytest.fixture(scope="module")
def full_job(live_server: LiveServer) -> tuple[str, str, dict[str, bytes]]:
    account = f"tg-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    api = FireworksApi(live_server.base_url, account, key)
    api.publish("base", weights(1))
    final = weights(2)
    api.publish("final-weights", final)
    api.close()
    response = register_full(live_server, key, 100, "final-weights")
    assert response.status_code == 200, response.text
    job = response.json()
    assert job["status"] == "completed" and job["training_type"] == {"type": "Full"}
    return job["id"], key, final


def test_registration_rejects_mismatched_shapes(
    live_server: LiveServer, full_job: tuple[str, str, dict[str, bytes]]
) -> None:
    _, key, _ = full_job
    api_account = httpx.get(
        f"{live_server.base_url}/v3/whoami", headers={"Authorization": f"Bearer {key}"}
    ).json()["organization"]["id"]
    api = FireworksApi(live_server.base_url, api_account, key)
    rng = np.random.default_rng(3)
    api.publish(
        "wrong-shape",
        {
            "config.json": b"{}",
            "model.safetensors": save(
                {"lm_head.weight": rng.standard_normal((10, 10)).astype(np.float32)}
            ),
        },
    )
    api.close()
    response = register_full(live_server, key, 1, "wrong-shape")
    assert response.status_code == 400
    assert "lm_head.weight" in response.json()["error"]["message"]


def test_cli_resumes_after_connection_drop(
    live_server: LiveServer, full_job: tuple[str, str, dict[str, bytes]], tmp_path: Path
) -> None:
    ft_id, key, final = full_job
    size = len(final["model.safetensors"])
    assert size > 20 * 1024 * 1024
    with TcpProxy(live_server.port, drop_after=15 * 1024 * 1024).running() as proxy:
        env = cli_env(live_server, tmp_path)
        env["TOGETHER_BASE_URL"] = proxy.base_url
        env["TOGETHER_API_KEY"] = key
        out = tmp_path / "full.tar.zst"
        result = subprocess.run(
            [CLI, "fine-tuning", "download", ft_id, "-o", str(out)],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proxy.dropped == 1
    assert result.returncode == 0, result.stdout + result.stderr
    assert "interrupted" in (result.stdout + result.stderr).lower()
    _, files = strip_top(archive_files(out.read_bytes()))
    assert digests(files) == digests(final)


def test_random_ranges_equal_slices_of_the_whole(
    live_server: LiveServer, full_job: tuple[str, str, dict[str, bytes]]
) -> None:
    ft_id, key, _ = full_job
    url = f"{live_server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=model_output_path"
    headers = {"Authorization": f"Bearer {key}"}
    whole = httpx.get(url, headers=headers, timeout=120)
    assert whole.status_code == 200
    assert "content-encoding" not in whole.headers
    assert "x-tar" not in whole.headers["content-type"]
    total = len(whole.content)
    probe = httpx.get(url, headers={**headers, "Range": "bytes=0-1"})
    assert probe.status_code == 206
    assert probe.headers["content-range"] == f"bytes 0-1/{total}"
    rng = np.random.default_rng(7)
    for _ in range(12):
        start = int(rng.integers(0, total))
        end = int(rng.integers(start, min(total, start + 3_000_000)))
        part = httpx.get(url, headers={**headers, "Range": f"bytes={start}-{end}"})
        assert part.status_code == 206
        assert part.content == whole.content[start : end + 1]
    again = httpx.get(url, headers=headers, timeout=120)
    assert hashlib.sha256(again.content).digest() == hashlib.sha256(whole.content).digest()
    assert again.headers["etag"] == whole.headers["etag"]
