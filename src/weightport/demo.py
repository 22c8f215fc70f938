"""A small, deterministic demo model so a newcomer can download something at once.

``demo-llama`` is a tiny Llama-architecture model (random weights from a fixed seed, bf16,
safetensors) with a byte-level tokenizer: real files in the real formats, a few MB in all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from safetensors.numpy import save

DEMO_MODEL_ID = "demo-llama"
DEMO_SUFFIX = "demo"
DEMO_STEPS = (10, 20, 30)

DIMS: dict[str, int] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 260,
}

CONFIG: dict[str, object] = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    **DIMS,
    "max_position_embeddings": 256,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 256,
    "eos_token_id": 257,
    "pad_token_id": 258,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
}

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def to_bf16(values: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round to nearest even."""
    bits = values.astype(np.float32).view(np.uint32)
    rounded = bits + 0x7FFF + ((bits >> 16) & 1)
    return (rounded >> 16).astype(np.uint16)


def _linear_shapes(config: Mapping[str, int]) -> dict[str, tuple[int, int]]:
    hidden, inter = config["hidden_size"], config["intermediate_size"]
    heads, kv, head_dim = (
        config["num_attention_heads"],
        config["num_key_value_heads"],
        config["head_dim"],
    )
    return {
        "self_attn.q_proj": (heads * head_dim, hidden),
        "self_attn.k_proj": (kv * head_dim, hidden),
        "self_attn.v_proj": (kv * head_dim, hidden),
        "self_attn.o_proj": (hidden, heads * head_dim),
        "mlp.gate_proj": (inter, hidden),
        "mlp.up_proj": (inter, hidden),
        "mlp.down_proj": (hidden, inter),
    }


def bf16_safetensors(tensors: Mapping[str, np.ndarray]) -> bytes:
    """A safetensors file whose uint16 arrays are labelled BF16 (bit patterns from to_bf16)."""
    # safetensors.numpy has no bfloat16 dtype: write uint16 bit patterns, then relabel them.
    raw = save(dict(tensors), metadata={"format": "pt"})
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    for name, info in header.items():
        if name != "__metadata__" and info["dtype"] == "U16":
            info["dtype"] = "BF16"
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # offsets are relative to the data, so any length works
    return len(text).to_bytes(8, "little") + text + raw[8 + header_len :]


def _tokenizer() -> dict[str, bytes]:
    vocab = {f"<0x{i:02X}>": i for i in range(256)}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258, "<unk>": 259})
    tokenizer: dict[str, object] = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {
                "id": i,
                "content": tok,
                "single_word": False,
                "lstrip": False,
                "rstrip": False,
                "normalized": False,
                "special": True,
            }
            for tok, i in (("<s>", 256), ("</s>", 257), ("<pad>", 258), ("<unk>", 259))
        ],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "ByteFallback"},
        "model": {
            "type": "BPE",
            "vocab": vocab,
            "merges": [],
            "byte_fallback": True,
            "unk_token": "<unk>",
            "dropout": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "ignore_merges": False,
        },
    }
    tokenizer_config = {
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 256,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    return {
        "tokenizer.json": json.dumps(tokenizer, indent=1).encode(),
        "tokenizer_config.json": json.dumps(tokenizer_config, indent=1).encode(),
        "special_tokens_map.json": json.dumps(special, indent=1).encode(),
    }


def demo_base_files(seed: int = 0) -> dict[str, bytes]:
    """The demo base model's files: relative path -> bytes (deterministic for a seed)."""
    rng = np.random.default_rng(seed)
    hidden, vocab = DIMS["hidden_size"], DIMS["vocab_size"]
    tensors: dict[str, np.ndarray] = {
        "model.embed_tokens.weight": to_bf16(rng.normal(0, 0.02, (vocab, hidden))),
        "model.norm.weight": to_bf16(np.ones(hidden)),
        "lm_head.weight": to_bf16(rng.normal(0, 0.02, (vocab, hidden))),
    }
    for layer in range(DIMS["num_hidden_layers"]):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = to_bf16(np.ones(hidden))
        tensors[f"{prefix}.post_attention_layernorm.weight"] = to_bf16(np.ones(hidden))
        for module, shape in _linear_shapes(DIMS).items():
            tensors[f"{prefix}.{module}.weight"] = to_bf16(rng.normal(0, 0.05, shape))
    files = {
        "config.json": json.dumps(CONFIG, indent=2).encode(),
        "generation_config.json": json.dumps(
            {"bos_token_id": 256, "eos_token_id": 257, "pad_token_id": 258}, indent=2
        ).encode(),
        "model.safetensors": bf16_safetensors(tensors),
    }
    files.update(_tokenizer())
    return files


def demo_adapter_files(step: int, *, r: int = 8, alpha: int = 16) -> dict[str, bytes]:
    """A PEFT LoRA adapter for the demo model; its weights depend on ``step``."""
    rng = np.random.default_rng(1000 + step)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(DIMS["num_hidden_layers"]):
        for module, (out_dim, in_dim) in _linear_shapes(DIMS).items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.1, (r, in_dim)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.01 * step, (out_dim, r)).astype(
                np.float32
            )
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": DEMO_MODEL_ID,
        "r": r,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": list(LORA_TARGETS),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "inference_mode": True,
    }
    return {
        "adapter_config.json": json.dumps(config, indent=2).encode(),
        "adapter_model.safetensors": save(tensors, metadata={"format": "pt"}),
    }
