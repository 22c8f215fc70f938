"""A synthetic but realistic checkpoint directory for the archive benchmark.

Weights are bf16 bit patterns of float32 normal values (std 0.02, like trained weights), so
their exponent distribution — the only compressible part — is realistic: zstd level 1
reaches a ratio of ≈ 1.28 on them, as measured on real bf16 checkpoints. The
tokenizer is BPE-shaped JSON of about 10 MB made of pseudo-words, which compresses
several-fold like a real ``tokenizer.json``.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from bench.common import MiB
from weightport.demo import bf16_safetensors, to_bf16

HIDDEN = 4096
#: Per layer: four hidden×hidden projections (4 × 32 MiB in bf16) and one norm vector.
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")
LAYER_BYTES = len(PROJECTIONS) * HIDDEN * HIDDEN * 2
LAYERS_PER_SHARD = 4
WEIGHT_STD = 0.02


def _layer(rng: np.random.Generator, index: int) -> dict[str, np.ndarray]:
    prefix = f"model.layers.{index}"
    tensors = {
        f"{prefix}.self_attn.{proj}.weight": to_bf16(
            rng.standard_normal((HIDDEN, HIDDEN), dtype=np.float32) * WEIGHT_STD
        )
        for proj in PROJECTIONS
    }
    tensors[f"{prefix}.input_layernorm.weight"] = to_bf16(np.ones(HIDDEN, dtype=np.float32))
    return tensors


def _tokenizer(seed: int, entries: int = 220_000) -> dict[str, object]:
    rng = random.Random(seed)
    onsets = [*"bcdfghjklmnprstvwz", "th", "ch", "sh", "st", "tr", "pl", "qu", ""]
    vowels = ["a", "e", "i", "o", "u", "ou", "ea", "ai", "y", "io"]
    syllables = [c + v for c in onsets for v in vowels]
    vocab: dict[str, int] = {}
    while len(vocab) < entries:
        word = "".join(rng.choices(syllables, k=rng.randint(1, 3)))
        vocab.setdefault(("\u0120" if rng.random() < 0.6 else "") + word, len(vocab))
    merges = []
    for word in vocab:
        if len(word) > 1:
            cut = rng.randint(1, len(word) - 1)
            merges.append(f"{word[:cut]} {word[cut:]}")
    return {
        "version": "1.0",
        "added_tokens": [{"id": entries, "content": "<|end|>", "special": True}],
        "model": {"type": "BPE", "vocab": vocab, "merges": merges, "byte_fallback": False},
    }


def make_checkpoint(folder: Path, weight_bytes: int, seed: int = 0) -> int:
    """Write an HF-style checkpoint with about ``weight_bytes`` of bf16 weights.

    Returns the total size of the files written.
    """
    layers = max(1, weight_bytes // LAYER_BYTES)
    shards = -(-layers // LAYERS_PER_SHARD)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    for shard in range(shards):
        name = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        tensors: dict[str, np.ndarray] = {}
        first = shard * LAYERS_PER_SHARD
        for index in range(first, min(first + LAYERS_PER_SHARD, layers)):
            tensors.update(_layer(rng, index))
        (folder / name).write_bytes(bf16_safetensors(tensors))
        weight_map.update(dict.fromkeys(tensors, name))
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "num_hidden_layers": layers,
        "num_attention_heads": 32,
        "torch_dtype": "bfloat16",
    }
    shard_index = {"metadata": {"total_size": layers * LAYER_BYTES}, "weight_map": weight_map}
    small = {
        "config.json": config,
        "model.safetensors.index.json": shard_index,
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2},
        "tokenizer_config.json": {"model_max_length": 8192, "tokenizer_class": "BPE"},
    }
    for path, body in small.items():
        (folder / path).write_text(json.dumps(body, indent=2) + "\n")
    # indent=2 and raw UTF-8 like the tokenizers library writes them.
    text = json.dumps(_tokenizer(seed), indent=2, ensure_ascii=False)
    (folder / "tokenizer.json").write_text(text, encoding="utf-8")
    return sum(p.stat().st_size for p in folder.iterdir())


if __name__ == "__main__":
    import sys
    import time

    began = time.perf_counter()
    total = make_checkpoint(Path(sys.argv[1]), int(sys.argv[2]) * MiB)
    print(f"{total} bytes in {time.perf_counter() - began:.1f} s")
