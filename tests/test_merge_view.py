"""The merged-model view: file layout, byte-exact random access, concurrency, and failure
handling, on a synthetic two-shard model (no torch needed)."""

from __future__ import annotations

import json
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.byte_sources import MemorySource
from tests.merge_fixtures import (
    adapter_files,
    bf16,
    memory_sources,
    read_all,
    reference_shard,
    safetensors_bytes,
)
from weightport.merge.safetensors_format import read_header
from weightport.merge.view import MergedShard, merged_files
from weightport.storage.base import ByteSource

RNG = np.random.default_rng(7)
P = "base_model.model."
SHARD1 = "model-00001-of-00003.safetensors"
SHARD2 = "model-00002-of-00003.safetensors"
SHARD3 = "model-00003-of-00003.safetensors"


def _w(shape: tuple[int, ...], dtype: str) -> tuple[str, np.ndarray]:
    values = (RNG.standard_normal(shape) * 0.1).astype(np.float32)
    if dtype == "BF16":
        return dtype, bf16(values)
    return dtype, values.astype({"F32": np.float32, "F16": np.float16}[dtype])


def _lora(
    module: str, rank: int, out_f: int, in_f: int, dtype: str = "F32"
) -> dict[str, tuple[str, np.ndarray]]:
    return {
        f"{P}{module}.lora_A.weight": _w((rank, in_f), dtype),
        f"{P}{module}.lora_B.weight": _w((out_f, rank), dtype),
    }


def _build() -> tuple[dict[str, bytes], dict[str, bytes]]:
    shard1 = {
        "model.embed_tokens.weight": _w((50, 24), "BF16"),
        "model.layers.0.self_attn.q_proj.weight": _w((40, 24), "BF16"),
        "model.layers.0.input_layernorm.weight": _w((24,), "F32"),
        "model.layers.0.self_attn.k_proj.weight": _w((16, 24), "F16"),
        "model.layers.0.mlp.up_proj.weight": _w((30, 24), "BF16"),
    }
    shard2 = {
        "model.layers.0.self_attn.v_proj.weight": _w((24, 24), "F32"),
        "model.norm.weight": _w((24,), "F32"),
        "lm_head.weight": _w((50, 24), "BF16"),
    }
    shard3 = {"model.layers.1.mlp.up_proj.weight": _w((8, 24), "BF16")}
    weight_map = (
        dict.fromkeys(shard1, SHARD1)
        | dict.fromkeys(shard2, SHARD2)
        | dict.fromkeys(shard3, SHARD3)
    )
    base = {
        "config.json": b'{"model_type": "llama"}',
        "tokenizer.json": b'{"version": "1.0"}',
        SHARD1: safetensors_bytes(shard1, metadata={"format": "pt"}),
        SHARD2: safetensors_bytes(shard2),
        SHARD3: safetensors_bytes(shard3),
        "model.safetensors.index.json": json.dumps(
            {"metadata": {}, "weight_map": weight_map}
        ).encode(),
        "pytorch_model.bin": b"unmerged pickle",
    }
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 7,
        "use_rslora": True,
        "rank_pattern": {"k_proj": 3},
        "target_modules": ["q_proj", "k_proj", "v_proj", "embed_tokens"],
        "modules_to_save": ["lm_head"],
    }
    tensors = {
        **_lora("model.layers.0.self_attn.q_proj", 4, 40, 24),
        **_lora("model.layers.0.self_attn.k_proj", 3, 16, 24, "BF16"),
        **_lora("model.layers.0.self_attn.v_proj", 4, 24, 24, "F16"),
        P + "model.embed_tokens.lora_embedding_A": _w((4, 50), "F32"),
        P + "model.embed_tokens.lora_embedding_B": _w((24, 4), "F32"),
        P + "lm_head.weight": _w((50, 24), "F32"),  # cast to the base's bf16
    }
    return base, adapter_files(config, tensors)


BASE, ADAPTER = _build()
BASE_SOURCES = memory_sources(BASE)
ADAPTER_SOURCES = memory_sources(ADAPTER)
REFERENCE = {p: reference_shard(BASE_SOURCES, ADAPTER_SOURCES, p) for p in (SHARD1, SHARD2)}


def test_layout_of_the_merged_model() -> None:
    files = merged_files(BASE_SOURCES, ADAPTER_SOURCES)
    assert list(files) == sorted(set(BASE) - {"pytorch_model.bin"})
    for path in ("config.json", "tokenizer.json", "model.safetensors.index.json", SHARD3):
        assert files[path] is BASE_SOURCES[path]  # untouched: the base's own source
    for path in (SHARD1, SHARD2):
        shard = files[path]
        assert isinstance(shard, MergedShard)
        assert shard.size == len(BASE[path])
        head = bytearray(100)
        shard.readinto(0, memoryview(head))
        assert bytes(head) == BASE[path][:100]


@pytest.mark.parametrize("block_bytes", [1, 100, 4096, 4 << 20])
def test_whole_shard_matches_the_reference(block_bytes: int) -> None:
    files = merged_files(BASE_SOURCES, ADAPTER_SOURCES, block_bytes=block_bytes)
    for path, expected in REFERENCE.items():
        assert read_all(files[path]) == expected
        assert expected != BASE[path]  # the merge changed something


def test_untargeted_tensors_are_the_base_bytes() -> None:
    header = read_header(MemorySource(BASE[SHARD1]))
    up = header.tensor("model.layers.0.mlp.up_proj.weight")
    norm = header.tensor("model.layers.0.input_layernorm.weight")
    q = header.tensor("model.layers.0.self_attn.q_proj.weight")
    assert up is not None and norm is not None and q is not None
    for t in (up, norm):
        assert REFERENCE[SHARD1][t.begin : t.end] == BASE[SHARD1][t.begin : t.end]
    assert REFERENCE[SHARD1][q.begin : q.end] != BASE[SHARD1][q.begin : q.end]


SHARDS = {
    block: merged_files(BASE_SOURCES, ADAPTER_SOURCES, block_bytes=block)
    for block in (64, 1000, 4 << 20)
}


@settings(max_examples=300, deadline=None)
@given(
    block=st.sampled_from(sorted(SHARDS)),
    path=st.sampled_from([SHARD1, SHARD2]),
    data=st.data(),
)
def test_any_range_equals_the_slice_of_the_whole(
    block: int, path: str, data: st.DataObject
) -> None:
    expected = REFERENCE[path]
    start = data.draw(st.integers(0, len(expected)))
    length = data.draw(st.integers(0, len(expected) - start))
    buf = bytearray(length)
    SHARDS[block][path].readinto(start, memoryview(buf))
    assert bytes(buf) == expected[start : start + length]


def test_concurrent_readers_see_the_same_bytes() -> None:
    shard = merged_files(BASE_SOURCES, ADAPTER_SOURCES, block_bytes=300)[SHARD1]
    expected = REFERENCE[SHARD1]
    failures: list[str] = []

    def reader(seed: int) -> None:
        rnd = random.Random(seed)
        for _ in range(60):
            start = rnd.randrange(len(expected))
            length = rnd.randrange(1, min(3000, len(expected) - start) + 1)
            buf = bytearray(length)
            shard.readinto(start, memoryview(buf))
            if bytes(buf) != expected[start : start + length]:
                failures.append(f"[{start}, {start + length})")

    threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_reads_outside_the_shard_are_refused() -> None:
    shard = merged_files(BASE_SOURCES, ADAPTER_SOURCES)[SHARD1]
    with pytest.raises(ValueError, match="outside"):
        shard.readinto(shard.size - 2, memoryview(bytearray(3)))
    with pytest.raises(ValueError, match="outside"):
        shard.readinto(-1, memoryview(bytearray(1)))


@dataclass
class CountingSource:
    """Wraps a source, counting the bytes read and optionally failing the next reads."""

    inner: ByteSource
    read: int = 0
    fail_next: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def size(self) -> int:
        return self.inner.size

    def readinto(self, offset: int, buf: memoryview) -> None:
        with self.lock:
            if self.fail_next:
                self.fail_next -= 1
                raise OSError("disk on fire")
            self.read += len(buf)
        self.inner.readinto(offset, buf)


def _big_model() -> tuple[dict[str, bytes], dict[str, bytes]]:
    base = {
        "model.safetensors": safetensors_bytes(
            {"model.layers.0.mlp.down_proj.weight": _w((2048, 256), "BF16")}
        )
    }
    config = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["down_proj"]}
    return base, adapter_files(config, _lora("model.layers.0.mlp.down_proj", 8, 2048, 256))


def test_a_small_read_computes_only_the_rows_it_touches() -> None:
    base, adapter = _big_model()
    counting = CountingSource(MemorySource(base["model.safetensors"]))
    with ThreadPoolExecutor(2) as pool:
        files = merged_files(
            {"model.safetensors": counting},
            memory_sources(adapter),
            executor=pool,
            block_bytes=4096,
        )
        shard = files["model.safetensors"]
        counting.read = 0
        buf = bytearray(10)
        shard.readinto(shard.size // 2, memoryview(buf))
    # One 4 KiB block on demand, perhaps the next one prefetched: not the 1 MiB tensor.
    assert counting.read <= 2 * 4096
    expected = reference_shard(
        {"model.safetensors": MemorySource(base["model.safetensors"])},
        memory_sources(adapter),
        "model.safetensors",
    )
    assert bytes(buf) == expected[shard.size // 2 : shard.size // 2 + 10]


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_prefetch_computes_the_next_blocks_in_the_background(prefetch: int) -> None:
    base, adapter = _big_model()
    counting = CountingSource(MemorySource(base["model.safetensors"]))
    pool = ThreadPoolExecutor(2)
    files = merged_files(
        {"model.safetensors": counting},
        memory_sources(adapter),
        executor=pool,
        block_bytes=4096,
        prefetch_blocks=prefetch,
    )
    shard = files["model.safetensors"]
    counting.read = 0
    start = read_header(MemorySource(base["model.safetensors"])).data_start
    shard.readinto(start, memoryview(bytearray(10)))
    pool.shutdown(wait=True)
    assert counting.read == 4096 * (1 + prefetch)
    # The prefetched blocks are served from the cache: no further base reads.
    buf = bytearray(4096 * (1 + prefetch))
    shard.readinto(start, memoryview(buf))
    assert counting.read == 4096 * (1 + prefetch)
    expected = reference_shard(
        {"model.safetensors": MemorySource(base["model.safetensors"])},
        memory_sources(adapter),
        "model.safetensors",
    )
    assert bytes(buf) == expected[start : start + len(buf)]


def test_a_failed_read_is_not_cached() -> None:
    base, adapter = _big_model()
    counting = CountingSource(MemorySource(base["model.safetensors"]))
    files = merged_files({"model.safetensors": counting}, memory_sources(adapter), block_bytes=4096)
    shard = files["model.safetensors"]
    expected = reference_shard(
        {"model.safetensors": MemorySource(base["model.safetensors"])},
        memory_sources(adapter),
        "model.safetensors",
    )
    counting.fail_next = 1
    buf = bytearray(5000)
    with pytest.raises(OSError, match="disk on fire"):
        shard.readinto(len(expected) - 5000, memoryview(buf))
    shard.readinto(len(expected) - 5000, memoryview(buf))
    assert bytes(buf) == expected[-5000:]
