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
from weightport.storage.base import ByteSource, MemorySource

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


@pytest.mark.parametrize("piece", [1, 3, 100, 4096, 4 << 20])
def test_whole_shard_matches_the_reference(piece: int) -> None:
    """Read front to back in pieces of any size: rows cut anywhere, even inside an element."""
    files = merged_files(BASE_SOURCES, ADAPTER_SOURCES)
    for path, expected in REFERENCE.items():
        shard = files[path]
        got = bytearray(shard.size)
        for start in range(0, shard.size, piece):
            stop = min(shard.size, start + piece)
            shard.readinto(start, memoryview(got)[start:stop])
        assert bytes(got) == expected
        assert read_all(shard) == expected
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


SHARDS = merged_files(BASE_SOURCES, ADAPTER_SOURCES)


@settings(max_examples=300, deadline=None)
@given(path=st.sampled_from([SHARD1, SHARD2]), misalign=st.integers(0, 3), data=st.data())
def test_any_range_equals_the_slice_of_the_whole(
    path: str, misalign: int, data: st.DataObject
) -> None:
    """Any range, into a buffer at any alignment (an archive puts 3-byte block headers
    between the bytes of a member)."""
    expected = REFERENCE[path]
    start = data.draw(st.integers(0, len(expected)))
    length = data.draw(st.integers(0, len(expected) - start))
    buf = bytearray(length + misalign)
    SHARDS[path].readinto(start, memoryview(buf)[misalign:])
    assert bytes(buf[misalign:]) == expected[start : start + length]


def test_concurrent_readers_see_the_same_bytes() -> None:
    shard = merged_files(BASE_SOURCES, ADAPTER_SOURCES)[SHARD1]
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
    shard = merged_files({"model.safetensors": counting}, memory_sources(adapter))[
        "model.safetensors"
    ]
    expected = reference_shard(
        {"model.safetensors": MemorySource(base["model.safetensors"])},
        memory_sources(adapter),
        "model.safetensors",
    )
    row = 256 * 2
    for offset, length in [(shard.size // 2, 10), (shard.size - 3 * row - 7, 2 * row + 14)]:
        counting.read = 0
        buf = bytearray(length)
        shard.readinto(offset, memoryview(buf))
        # The rows the read touches (at most two more than it covers): not the 1 MiB tensor.
        assert counting.read <= length + 2 * row
        assert bytes(buf) == expected[offset : offset + length]


def test_rows_in_place_and_cut_rows_agree_across_threads() -> None:
    """Many threads reading adjacent pieces that cut rows: each thread's one-row cache must
    never hand one thread's row (or another view's) to another."""
    base, adapter = _big_model()
    other_base, other_adapter = _big_model()
    views = [
        merged_files(memory_sources(b), memory_sources(a))["model.safetensors"]
        for b, a in ((base, adapter), (other_base, other_adapter))
    ]
    expected = [
        reference_shard(memory_sources(b), memory_sources(a), "model.safetensors")
        for b, a in ((base, adapter), (other_base, other_adapter))
    ]
    assert expected[0] != expected[1]

    def read(job: tuple[int, int]) -> bool:
        which, piece = job
        view = views[which]
        got = bytearray(view.size)
        for start in range(0, view.size, piece):
            view.readinto(start, memoryview(got)[start : min(view.size, start + piece)])
        return bytes(got) == expected[which]

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(read, [(i % 2, 1000 + 77 * i) for i in range(8)]))


def test_a_failed_read_leaves_nothing_behind() -> None:
    base, adapter = _big_model()
    counting = CountingSource(MemorySource(base["model.safetensors"]))
    files = merged_files({"model.safetensors": counting}, memory_sources(adapter))
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
