"""Repositories for the Hugging Face surface tests: published over the real APIs.

A sharded copy of the demo Llama (two safetensors shards and their index, a nested file, a
file name with a space), two LoRA adapters uploaded as models, and a LoRA fine-tune
registered from them whose output name is ``<account>/llama-sft``.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

import httpx
import torch
from peft import PeftModel
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from transformers import AutoModelForCausalLM

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from weightport import demo
from weightport.catalog import accounts

SHARDS = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
NESTED = "original/params.json"
SPACED = "docs/read me.md"
STEPS = (10, 30)


def sharded_base_files() -> dict[str, bytes]:
    """The demo model with its weights split into two shards and an index."""
    files = demo.demo_base_files()
    tensors = load_tensors(files.pop("model.safetensors"))
    names = sorted(tensors)
    half = len(names) // 2
    weight_map: dict[str, str] = {}
    for shard, chosen in zip(SHARDS, (names[:half], names[half:]), strict=True):
        files[shard] = save_tensors({n: tensors[n] for n in chosen}, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chosen, shard))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    files["model.safetensors.index.json"] = json.dumps(index, indent=2).encode()
    files[NESTED] = b'{"dim": 64, "n_layers": 2}\n'
    files[SPACED] = b"# Tiny sharded Llama\n"
    return files


@dataclass(frozen=True)
class HubWorld:
    """What the tests published, and the keys and ids to reach it."""

    server: LiveServer
    account: str
    key: str
    revoked_key: str
    other_repo: str
    ft_id: str
    base_files: dict[str, bytes]
    adapters: dict[int, dict[str, bytes]]

    @property
    def repo(self) -> str:
        return f"{self.account}/tiny-sharded"

    @property
    def ft_repo(self) -> str:
        return f"{self.account}/llama-sft"

    @property
    def ft_id_repo(self) -> str:
        return f"{self.account}/{self.ft_id}"

    @property
    def endpoint(self) -> str:
        return f"{self.server.base_url}/hf"


def publish_world(server: LiveServer) -> HubWorld:
    """Publish the repositories into a fresh account (and one into another account)."""
    account = f"hf-{secrets.token_hex(3)}"
    key = server.new_account(account)
    revoked_key = server.new_account(account)
    api = FireworksApi(server.base_url, account, key)
    base_files = sharded_base_files()
    api.publish("tiny-sharded", base_files)
    adapters = {step: demo.demo_adapter_files(step) for step in STEPS}
    for step, files in adapters.items():
        api.publish(f"adapter-{step}", files, kind="HF_PEFT_ADDON")
    api.close()
    response = httpx.post(
        f"{server.base_url}/weightport/v1/fine-tunes",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "base_model": "tiny-sharded",
            "training_type": "Lora",
            "model_output_name": f"{account}/llama-sft",
            "checkpoints": [
                {"step": 10, "kind": "intermediate", "model": "adapter-10"},
                {"step": 30, "kind": "final", "model": "adapter-30"},
            ],
        },
        timeout=60,
    )
    assert response.status_code == 200, response.text
    other = f"hf-{secrets.token_hex(3)}"
    other_api = FireworksApi(server.base_url, other, server.new_account(other))
    other_api.publish("secret-model", {"config.json": b"{}"})
    other_api.close()
    revoke(server, revoked_key)
    return HubWorld(
        server,
        account,
        key,
        revoked_key,
        f"{other}/secret-model",
        response.json()["id"],
        base_files,
        adapters,
    )


def revoke(server: LiveServer, secret: str) -> None:
    key_id = secret.split("_")[1]
    catalog = server.catalog()
    try:
        catalog.call(lambda s: accounts.revoke_key(s, key_id))
    finally:
        catalog.close()


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


def peft_merged(base_files: dict[str, bytes], adapter: dict[str, bytes], work: Path) -> dict:
    """The oracle: peft's merge_and_unload of the adapter into the base, as a state dict."""
    base_dir = write_files(work / "oracle-base", base_files)
    adapter_dir = write_files(work / f"oracle-adapter-{secrets.token_hex(2)}", adapter)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    return {k: v.clone() for k, v in merged.state_dict().items()}
