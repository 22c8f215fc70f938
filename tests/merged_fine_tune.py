"""A LoRA fine-tune whose merged download is tens of MB, registered over HTTP.

The demo's merged archive is small enough to vanish into socket buffers; tests of clients
that stop reading need responses that cannot.
"""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.fw_helpers import FireworksApi
from tests.merge_fixtures import adapter_files, bf16, safetensors_bytes

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
RANK = 8


def base_files(hidden: int, layers: int) -> dict[str, bytes]:
    """config.json and one bf16 shard: ``layers`` × 4 projections of hidden × hidden."""
    rng = np.random.default_rng(0)
    tensors = {
        f"model.layers.{n}.self_attn.{proj}.weight": (
            "BF16",
            bf16(rng.standard_normal((hidden, hidden), dtype=np.float32) * 0.02),
        )
        for n in range(layers)
        for proj in TARGETS
    }
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    return {
        "config.json": json.dumps(config).encode(),
        "model.safetensors": safetensors_bytes(tensors),
    }


def lora_files(hidden: int, layers: int) -> dict[str, bytes]:
    """A rank-8 LoRA adapter on every projection of :func:`base_files`."""
    rng = np.random.default_rng(1)
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 16,
        "target_modules": list(TARGETS),
        "fan_in_fan_out": False,
        "bias": "none",
    }
    tensors = {}
    for n in range(layers):
        for proj in TARGETS:
            prefix = f"base_model.model.model.layers.{n}.self_attn.{proj}"
            a = rng.standard_normal((RANK, hidden), dtype=np.float32) * 0.02
            b = rng.standard_normal((hidden, RANK), dtype=np.float32) * 0.02
            tensors[f"{prefix}.lora_A.weight"] = ("F32", a)
            tensors[f"{prefix}.lora_B.weight"] = ("F32", b)
    return adapter_files(config, tensors)


def publish_merged_fine_tune(
    base_url: str, account: str, key: str, *, hidden: int = 2048, layers: int = 2
) -> str:
    """Upload a base and an adapter as models of ``account`` and register a LoRA fine-tune
    on them; returns its id. The merged archive is about ``layers × 8 × hidden²`` bytes."""
    api = FireworksApi(base_url, account, key)
    try:
        api.publish("big-base", base_files(hidden, layers))
        adapter = lora_files(hidden, layers)
        assert api.create("big-adapter", kind="HF_PEFT_ADDON").status_code == 200
        urls = api.upload_urls("big-adapter", {p: len(d) for p, d in adapter.items()})
        for path, url in urls.items():
            assert httpx.put(url, content=adapter[path]).status_code == 200
        assert api.validate("big-adapter").status_code == 200
        response = api.http.post(
            f"{base_url}/weightport/v1/fine-tunes",
            json={
                "base_model": "big-base",
                "training_type": "Lora",
                "checkpoints": [{"step": 1, "kind": "final", "model": "big-adapter"}],
            },
        )
        assert response.status_code == 200, response.text
        ft_id: str = response.json()["id"]
        return ft_id
    finally:
        api.close()
