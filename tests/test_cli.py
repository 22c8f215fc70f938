"""The ``weightport`` command as a user runs it: keys, models push/list, finetunes import/list."""

from __future__ import annotations

import hashlib
import json
import secrets
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer
from weightport import demo


def weightport(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "weightport", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_first_start_banner_has_key_and_commands(live_server: LiveServer) -> None:
    assert live_server.log_path is not None
    log = live_server.log_path.read_text()
    assert live_server.admin_key in log
    assert "FIREWORKS_BASE_URL=" in log and "together fine-tuning download ft-" in log
    assert "Traceback" not in log


def test_keys_create_list_revoke(live_server: LiveServer) -> None:
    data = ["--data-dir", str(live_server.data_dir)]
    created = weightport("keys", "create", "--account", "cli-keys", "--create-account", *data)
    key = created.stdout.strip()
    headers = {"Authorization": f"Bearer {key}"}
    url = f"{live_server.base_url}/v1/accounts/cli-keys/models"
    assert httpx.get(url, headers=headers).status_code == 200
    listed = weightport("keys", "list", "--account", "cli-keys", *data).stdout
    key_id = listed.split()[0]
    assert key not in listed  # secrets are never shown again
    weightport("keys", "revoke", key_id, *data)
    assert httpx.get(url, headers=headers).status_code == 401
    missing = weightport("keys", "revoke", "nope", *data, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_models_push_and_list(live_server: LiveServer, tmp_path: Path) -> None:
    account = f"push-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    folder = tmp_path / "model"
    (folder / "tokenizer").mkdir(parents=True)
    files = {
        "config.json": b'{"model_type": "llama"}',
        "model.safetensors": secrets.token_bytes(1_500_000),
        "tokenizer/tokenizer.json": b"{}",
    }
    for name, body in files.items():
        (folder / name).write_bytes(body)
    target = ["--base-url", live_server.base_url, "--api-key", key, "--account", account]
    pushed = weightport("models", "push", str(folder), "--model", "pushed", "--quiet", *target)
    assert "READY" in pushed.stdout
    listed = json.loads(weightport("models", "list", "--json", *target).stdout)
    assert [m["state"] for m in listed] == ["READY"]
    endpoint = httpx.get(
        f"{live_server.base_url}/v1/accounts/{account}/models/pushed:getDownloadEndpoint",
        headers={"Authorization": f"Bearer {key}"},
    ).json()
    assert endpoint["filenameToSha256"] == {
        name: hashlib.sha256(body).hexdigest() for name, body in files.items()
    }
    again = weightport("models", "push", str(folder), "--model", "pushed", *target, check=False)
    assert again.returncode == 1 and "already READY" in again.stderr


def write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, body in files.items():
        (folder / name).write_bytes(body)
    return folder


def test_finetunes_import_and_list(live_server: LiveServer, tmp_path: Path) -> None:
    data = ["--data-dir", str(live_server.data_dir)]
    step5 = write(tmp_path / "s5", demo.demo_adapter_files(5))
    final = write(tmp_path / "s9", demo.demo_adapter_files(9))
    imported = weightport(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--checkpoint",
        f"5={step5}", "--final", f"9={final}", "--suffix", "cli", *data,
    )  # fmt: skip
    ft_id = imported.stdout.strip()
    assert ft_id.startswith("ft-")
    listed = weightport("finetunes", "list", *data).stdout
    assert ft_id in listed and "completed" in listed
    response = httpx.get(
        f"{live_server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=adapter",
        headers={"Authorization": f"Bearer {live_server.admin_key}"},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda cfg: cfg.update(use_dora=True), "DoRA"),
        (lambda cfg: cfg.update(peft_type="PREFIX_TUNING"), "PREFIX_TUNING"),
    ],
)
def test_finetunes_import_rejects_unsupported_adapters(
    live_server: LiveServer, tmp_path: Path, mutate: object, message: str
) -> None:
    files = demo.demo_adapter_files(3)
    config = json.loads(files["adapter_config.json"])
    assert callable(mutate)
    mutate(config)
    files["adapter_config.json"] = json.dumps(config).encode()
    folder = write(tmp_path / "bad", files)
    result = weightport(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--final", f"1={folder}",
        "--data-dir", str(live_server.data_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert message.lower() in result.stderr.lower()
    assert "Traceback" not in result.stderr


def test_finetunes_import_rejects_shape_mismatch(live_server: LiveServer, tmp_path: Path) -> None:
    files = demo.demo_adapter_files(4, r=8)
    wrong = demo.demo_adapter_files(4, r=8)
    # An adapter for a wider model: B of q_proj has too many rows for the demo base.
    from safetensors.numpy import load, save

    tensors = load(wrong["adapter_model.safetensors"])
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"
    tensors[name] = tensors[name].repeat(2, axis=0)
    files["adapter_model.safetensors"] = save(tensors)
    folder = write(tmp_path / "wide", files)
    result = weightport(
        "finetunes", "import", "--base-model", demo.DEMO_MODEL_ID, "--final", f"1={folder}",
        "--data-dir", str(live_server.data_dir), check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert "q_proj" in result.stderr
