"""The merge benchmarks' data: a bf16 Llama-shaped base model and a rank-16 LoRA adapter.

Generated with NumPy from fixed seeds, streamed to disk one tensor at a time (only one tensor
is in memory), laid out as transformers' and peft's ``save_pretrained`` write them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
RANK, ALPHA = 16, 32
WEIGHT_STD, FACTOR_STD = 0.02, 0.02


@dataclass(frozen=True)
class Shape:
    """The generated Llama: sizes of every dimension (bf16, untied embeddings)."""

    hidden: int
    intermediate: int
    layers: int
    vocab: int
    heads: int = 32

    def tensors(self) -> dict[str, tuple[int, ...]]:
        """Every weight's name and shape, in the order they are written."""
        h, i = self.hidden, self.intermediate
        out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab, h)}
        for n in range(self.layers):
            p = f"model.layers.{n}"
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out[f"{p}.self_attn.{proj}.weight"] = (h, h)
            out[f"{p}.mlp.gate_proj.weight"] = (i, h)
            out[f"{p}.mlp.up_proj.weight"] = (i, h)
            out[f"{p}.mlp.down_proj.weight"] = (h, i)
            out[f"{p}.input_layernorm.weight"] = (h,)
            out[f"{p}.post_attention_layernorm.weight"] = (h,)
        out["model.norm.weight"] = (h,)
        out["lm_head.weight"] = (self.vocab, h)
        return out

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        }


FULL = Shape(hidden=2048, intermediate=5632, layers=8, vocab=32000)
QUICK = Shape(hidden=2048, intermediate=5632, layers=2, vocab=8000)


# ---------------------------------------------------------------- data


def _bf16(values: np.ndarray) -> np.ndarray:
    bits = values.astype(np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def write_safetensors(
    path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]], fill: Any
) -> None:
    """Stream a safetensors file: header first, then each tensor from ``fill(name)``.

    ``tensors`` maps name → (dtype, shape); only one tensor is in memory at a time.
    """
    itemsize = {"BF16": 2, "F32": 4}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        size = int(np.prod(shape)) * itemsize[dtype]
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with path.open("wb") as out:
        out.write(len(raw).to_bytes(8, "little") + raw)
        for name in tensors:
            out.write(np.ascontiguousarray(fill(name)).tobytes())


def make_base(folder: Path, shape: Shape, seed: int = 0) -> int:
    """The base model folder (config.json + model.safetensors); returns the largest tensor's
    size in bytes."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(shape.config(), indent=2))
    rng = np.random.default_rng(seed)
    shapes = shape.tensors()

    def fill(name: str) -> np.ndarray:
        dims = shapes[name]
        if len(dims) == 1:
            return _bf16(np.ones(dims, dtype=np.float32))
        return _bf16(rng.standard_normal(dims, dtype=np.float32) * np.float32(WEIGHT_STD))

    write_safetensors(
        folder / "model.safetensors", {n: ("BF16", s) for n, s in shapes.items()}, fill
    )
    return max(int(np.prod(s)) * 2 for s in shapes.values())


def make_adapter(folder: Path, shape: Shape, seed: int = 1) -> None:
    """A PEFT LoRA adapter folder as peft's ``save_pretrained`` writes it (float32 factors)."""
    folder.mkdir(parents=True)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "base",
        "r": RANK,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.0,
        "target_modules": list(TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "modules_to_save": None,
        "inference_mode": True,
        "init_lora_weights": True,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    rng = np.random.default_rng(seed)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name, dims in shape.tensors().items():
        module = name.removesuffix(".weight")
        if len(dims) != 2 or module.rsplit(".", 1)[-1] not in TARGETS:
            continue
        out_f, in_f = dims
        prefix = f"base_model.model.{module}"
        tensors[f"{prefix}.lora_A.weight"] = ("F32", (RANK, in_f))
        tensors[f"{prefix}.lora_B.weight"] = ("F32", (out_f, RANK))

    def fill(name: str) -> np.ndarray:
        return rng.standard_normal(tensors[name][1], dtype=np.float32) * np.float32(FACTOR_STD)

    write_safetensors(folder / "adapter_model.safetensors", tensors, fill)
