"""The ``weightport`` command as a user runs it: keys, models push/list, finetunes import/list."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import clean_env, one_error_line, weightport
from tests.conftest import LiveServer
from weightport import demo


def test_first_start_banner_has_key_and_commands(live_server: LiveServer) -> None:
    assert live_server.log_path is not None
    log = live_server.log_path.read_text()
    assert live_server.admin_key in log
    assert "FIREWORKS_BASE_URL=" in log and "together fine-tuning download ft-" in log
    assert f"HF_ENDPOINT={live_server.base_url}/hf HF_TOKEN={live_server.admin_key}" in log
    assert "hf download admin/ft-" in log
    assert "Traceback" not in log


def test_keys_create_list_revoke(live_server: LiveServer) -> None:
    data = ["--data-dir", str(live_server.data_dir)]
    created = weightport("keys", "create", "--account", "cli-keys", "--create-account", *data)
    key = created.stdout.strip()
    second = weightport("keys", "create", "--account", "cli-keys", *data).stdout.strip()
    url = f"{live_server.base_url}/v1/accounts/cli-keys/models"

    def status(secret: str) -> int:
        return httpx.get(url, headers={"Authorization": f"Bearer {secret}"}).status_code

    assert status(key) == status(second) == 200
    listed = weightport("keys", "list", "--account", "cli-keys", *data).stdout.splitlines()
    assert listed[0].split() == ["ID", "ACCOUNT", "STATE", "CREATED", "NAME"]
    assert len(listed) == 3 and key not in "".join(listed)  # secrets are never shown again
    weightport("keys", "revoke", listed[1].split()[0], *data)  # by id
    assert status(key) == 401 and status(second) == 200
    revoked = weightport("keys", "revoke", second, *data)  # by the whole key
    assert status(second) == 401 and second not in revoked.stdout
    states = weightport("keys", "list", "--account", "cli-keys", *data).stdout
    assert states.count("revoked") == 2
    missing = weightport("keys", "revoke", "nope", *data, check=False)
    assert missing.returncode == 1 and "not found" in one_error_line(missing)
    forged = weightport("keys", "revoke", second[:-4] + "AAAA", *data, check=False)
    assert forged.returncode == 1 and "no such API key" in one_error_line(forged)
    assert second[:-4] not in forged.stderr  # the secret is never echoed


CATALOG_COMMANDS = [
    ("keys", "list"),
    ("keys", "create"),
    ("keys", "revoke", "0123456789ab"),
    ("finetunes", "list"),
    ("finetunes", "import", "--base-model", "m", "--final", "1=."),
]


@pytest.mark.parametrize("command", CATALOG_COMMANDS, ids=" ".join)
def test_catalog_commands_never_create_a_data_directory(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    result = weightport(*command, check=False, cwd=tmp_path)
    assert result.returncode == 1
    message = one_error_line(result)
    assert str(tmp_path / "weightport-data") in message
    assert "--data-dir" in message and "WEIGHTPORT_DATA_DIR" in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("how", ["flag", "env"])
def test_catalog_errors_name_the_directory_they_looked_at(
    tmp_path: Path, how: str, live_server: LiveServer
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    env = clean_env(WEIGHTPORT_DATA_DIR=str(empty)) if how == "env" else None
    args = ["--data-dir", str(empty)] if how == "flag" else []
    result = weightport("keys", "list", *args, check=False, env=env, cwd=tmp_path)
    assert f"no weightport catalog in data directory {empty}: " in one_error_line(result)
    assert list(empty.iterdir()) == []  # no empty catalog left behind
    data = ["--data-dir", str(live_server.data_dir)]
    unknown = weightport("keys", "create", "--account", "nobody", *data, check=False)
    assert unknown.returncode == 1
    assert one_error_line(unknown) == (
        f'account "nobody" not found (in data directory {live_server.data_dir.resolve()})'
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "sqlite:///{tmp}/absent.db",
            "no weightport catalog in database sqlite:///{tmp}/absent.db",
        ),
        ("sqlite:///{tmp}/no/such/dir.db", "no weightport catalog in database sqlite:///{tmp}/no/"),
        (
            "postgresql://u:pw@127.0.0.1:1/db",
            "catalog in database postgresql://u:***@127.0.0.1:1/db:",
        ),
        ("not a url", "the database that --database-url / WEIGHTPORT_DATABASE_URL names"),
    ],
)
def test_catalog_errors_name_the_database_without_its_password(
    tmp_path: Path, url: str, expected: str
) -> None:
    url, expected = url.format(tmp=tmp_path), expected.format(tmp=tmp_path)
    result = weightport("keys", "list", "--database-url", url, check=False, cwd=tmp_path)
    assert result.returncode == 1
    message = one_error_line(result)
    assert expected in message, message
    assert "pw@" not in message
    assert list(tmp_path.iterdir()) == []


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
    # Pushing the same directory again verifies and succeeds; different bytes cannot.
    again = weightport("models", "push", str(folder), "--model", "pushed", "--quiet", *target)
    assert "READY" in again.stdout
    (folder / "config.json").write_bytes(b'{"model_type": "other"}')
    changed = weightport("models", "push", str(folder), "--model", "pushed", *target, check=False)
    assert changed.returncode == 1
    assert "does not hold the files pushed (different bytes: config.json)" in one_error_line(
        changed
    )


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
    listed = weightport("finetunes", "list", *data).stdout.splitlines()
    row = listed.index(next(line for line in listed if line.startswith(ft_id)))
    assert "completed" in listed[row]
    assert listed[row + 1 : row + 3] == [
        "    step 5: intermediate adapter",
        "    step 9: final adapter",
    ]
    jobs = json.loads(weightport("finetunes", "list", "--json", *data).stdout)
    (job,) = [j for j in jobs if j["id"] == ft_id]
    assert job["weightport_checkpoints"] == [
        {"step": 5, "kind": "intermediate", "artifacts": ["adapter"]},
        {"step": 9, "kind": "final", "artifacts": ["adapter"]},
    ]
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
