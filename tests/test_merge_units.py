"""Unit tests of the merge building blocks: safetensors headers, bf16/f16 rounding and the
LoRA product against PyTorch, adapter configs, adapter tensor names, and merge validation."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import safe_open

from tests.merge_fixtures import (
    adapter_files,
    bf16,
    memory_sources,
    merge_rows,
    safetensors_bytes,
)
from weightport.errors import InvalidArgument
from weightport.merge.adapter import AdapterConfig, AdapterKey, Role, parse_adapter_key
from weightport.merge.plan import validate_merge
from weightport.merge.safetensors_format import parse_header, read_header
from weightport.merge.tensor import (
    bf16_to_float32,
    float32_to_bf16,
    from_float32,
    lora_factors,
    lora_product,
)
from weightport.storage.base import MemorySource

RNG = np.random.default_rng(20240611)


# -- safetensors headers ---------------------------------------------------------------------


def test_header_matches_the_safetensors_library(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    tensors = {
        "w": torch.randn(7, 5).to(torch.bfloat16),
        "b": torch.randn(5),
        "h": torch.randn(3, 2, 2).to(torch.float16),
        "ids": torch.arange(11),
        "flag": torch.tensor([True, False]),
        "empty": torch.zeros(0, 4),
    }
    path = tmp_path / "x.safetensors"
    save_file(tensors, str(path), metadata={"format": "pt"})
    data = path.read_bytes()
    header = read_header(MemorySource(data))
    assert header.metadata == {"format": "pt"}
    assert header.file_size == len(data)
    with safe_open(str(path), "pt") as f:
        assert sorted(header.names) == sorted(f.keys())
        for t in header.tensors:
            ref = f.get_tensor(t.name)
            assert t.shape == tuple(ref.shape)
            assert t.dtype == f.get_slice(t.name).get_dtype()
            assert data[t.begin : t.end] == ref.contiguous().view(torch.uint8).numpy().tobytes()


def test_header_prefix_is_byte_exact() -> None:
    data = safetensors_bytes({"a": ("F32", np.ones((2, 3)))}, metadata={"k": "v"})
    header = read_header(MemorySource(data))
    assert header.prefix == data[: header.data_start]
    assert header.tensor("a") is not None
    assert header.tensor("a").begin == header.data_start  # type: ignore[union-attr]
    assert header.tensor("missing") is None


def _file(header: object, data_len: int, *, raw: bytes | None = None) -> bytes:
    body = raw if raw is not None else json.dumps(header).encode()
    return len(body).to_bytes(8, "little") + body + bytes(data_len)


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "too short"),
        ((10**9).to_bytes(8, "little") + b"{}", "exceeds"),
        ((100).to_bytes(8, "little") + b"{}", "past the end"),
        (_file(None, 0, raw=b"[1, 2]"), "not a JSON object"),
        (_file(None, 0, raw=b"{nope"), "not valid JSON"),
        (_file(None, 0, raw=b'{"\xff": 1}'), "not UTF-8"),
        (_file(None, 8, raw=b'{"a": %s, "a": %s}' % ((json.dumps(T).encode(),) * 2)), "duplicate"),
        (_file({"a": {**T, "dtype": "F7"}}, 8), "unsupported dtype"),
        (_file({"a": {**T, "shape": [3]}}, 8), "needs 12"),
        (_file({"a": {**T, "shape": [True, 2]}}, 8), "invalid shape"),
        (_file({"a": {**T, "data_offsets": [8, 0]}}, 8), "invalid data_offsets"),
        (_file({"a": {**T, "data_offsets": [4, 12]}}, 12), "starts at data offset 4"),
        (_file({"a": T, "b": T}, 8), "expected 8"),
        (_file({"a": T}, 9), "file has"),
        (_file({"a": {**T, "extra": 1}}, 8), "exactly dtype"),
        (_file({"__metadata__": {"k": 1}}, 0), "__metadata__"),
    ],
)
def test_header_rejections(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        read_header(MemorySource(data))


def test_parse_header_checks_the_declared_length() -> None:
    data = safetensors_bytes({"a": ("F32", np.ones(2))})
    with pytest.raises(InvalidArgument, match="does not match"):
        parse_header(data[:20], len(data))


# -- bf16 / f16 rounding against torch ----------------------------------------------------


def _special_f32_bits(n: int) -> np.ndarray:
    bits = RNG.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    special = np.array(
        [
            0x00000000, 0x80000000, 0x7F800000, 0xFF800000,  # zeros, infinities
            0x7FC00000, 0xFFC00000, 0x7F800001, 0x7FBFFFFF,  # quiet / signalling NaNs
            0x00000001, 0x807FFFFF, 0x00008000, 0x00018000,  # subnormals, ties
            0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x7F7F8000,  # ties to even, overflow
            0x3F807FFF, 0x3F808001,
        ],
        dtype=np.uint32,
    )  # fmt: skip
    # Ties and near-ties in bulk: low 16 bits 0x8000 / 0x7FFF / 0x8001.
    ties = (bits[:1000] & 0xFFFF0000) | RNG.choice([0x8000, 0x7FFF, 0x8001], 1000).astype(np.uint32)
    return np.concatenate([special, ties, bits])


def test_float32_to_bf16_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    values = _special_f32_bits(200_000).view(np.float32)
    ours = float32_to_bf16(values)
    theirs = torch.from_numpy(values.copy()).to(torch.bfloat16).view(torch.int16).numpy()
    theirs = theirs.view(np.uint16)
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan], theirs[~nan])
    # NaN stays NaN; torch's vectorised CPU kernels write 0xFFFF, and so do we.
    assert np.all(np.isnan(bf16_to_float32(ours[nan])))
    assert np.array_equal(ours[nan], theirs[nan])


def test_bf16_to_float32_matches_torch_for_every_pattern() -> None:
    torch = pytest.importorskip("torch")
    bits = np.arange(2**16, dtype=np.uint16)
    ours = bf16_to_float32(bits)
    theirs = torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16).float().numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_float32_to_f16_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    values = _special_f32_bits(200_000).view(np.float32)
    ours = from_float32(values, "F16")
    theirs = torch.from_numpy(values.copy()).to(torch.float16).numpy()
    nan = np.isnan(values)
    assert np.array_equal(ours[~nan].view(np.uint16), theirs[~nan].view(np.uint16))
    assert np.all(np.isnan(ours[nan]))


# -- the LoRA product and the merge against torch ----------------------------------------


@pytest.mark.parametrize(
    ("rows", "rank", "cols", "scale"),
    [
        (64, 1, 64, 0.05),
        (64, 4, 64, 0.05),
        (384, 16, 384, 0.02),
        (1536, 8, 384, 1.0),
        (100, 32, 1000, 3.0),
        (257, 16, 129, 1e-13),  # below the fast range: the fully checked path
        (64, 4, 80, 1e19),  # above it
    ],
)
def test_lora_product_is_bit_identical_to_torch_matmul(
    rows: int, rank: int, cols: int, scale: float
) -> None:
    torch = pytest.importorskip("torch")
    b = torch.from_numpy((RNG.standard_normal((rows, rank)) * scale).astype(np.float32))
    a = torch.from_numpy((RNG.standard_normal((rank, cols)) * scale).astype(np.float32))
    ours = lora_product(b.numpy(), a.numpy())
    assert np.array_equal(ours.view(np.uint32), (b @ a).numpy().view(np.uint32))


def test_double_rounding_on_a_midpoint_is_corrected() -> None:
    """1 + b*a is exactly 1 + 2**-24 + 2**-60: float64 rounds it onto the float32 midpoint
    1 + 2**-24, and rounding that again gives 1.0; one fused rounding gives 1 + 2**-23.
    Likewise (1 + 2**-23) + (2**-24 - 2**-60) must stay below the midpoint."""
    b = np.float32((1 + 2**-12) * 2**-24)
    a = np.float32(1 - 4095 * 2**-24)
    b2 = np.float32((1 + 2**-18) * 2**-24)
    a2 = np.float32(1 - 2**-18)
    up = np.float32(1 + 2**-23)
    assert float(b) * float(a) == 2**-24 + 2**-60 and float(b2) * float(a2) == 2**-24 - 2**-60
    left = (RNG.standard_normal((64, 2)) * 0.01).astype(np.float32)
    right = (RNG.standard_normal((2, 64)) * 0.01).astype(np.float32)
    planted = {(0, 0): (1.0, b, 1.0, a), (5, 9): (-1.0, -b, 1.0, a), (63, 63): (1.0, b2, up, a2)}
    for (i, j), (l0, l1, r0, r1) in planted.items():
        left[i] = np.array([l0, l1], dtype=np.float32)
        right[:, j] = np.array([r0, r1], dtype=np.float32)
    ours = lora_product(left, right)
    assert ours[0, 0] == up
    assert ours[5, 9] == -up
    assert ours[63, 63] == up  # rounding the float64 midpoint to even would give 1 + 2**-22
    torch = pytest.importorskip("torch")
    theirs = (torch.from_numpy(left) @ torch.from_numpy(right)).numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_double_rounding_among_subnormals_is_corrected() -> None:
    """(2**-127 + 2**-149) + (2**-150 - 2**-186): the float64 sum lands on the float32
    (subnormal) midpoint, rounding it to even goes up, the exact sum stays below."""
    b = np.float32((1 + 2**-18) * 2**-75)
    a = np.float32((1 - 2**-18) * 2**-75)
    acc = np.float32(2**-127 + 2**-149)
    assert float(b) * float(a) == 2**-150 - 2**-186
    left = (RNG.standard_normal((64, 2)) * 0.01).astype(np.float32)
    right = (RNG.standard_normal((2, 64)) * 0.01).astype(np.float32)
    left[3], right[:, 7] = (1, b), (acc, a)
    ours = lora_product(left, right)
    assert ours[3, 7] == acc
    torch = pytest.importorskip("torch")
    theirs = (torch.from_numpy(left) @ torch.from_numpy(right)).numpy()
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_lora_product_with_subnormal_and_nonfinite_inputs() -> None:
    torch = pytest.importorskip("torch")
    b = (RNG.standard_normal((50, 6)) * 1e-20).astype(np.float32)
    a = (RNG.standard_normal((6, 70)) * 1e-20).astype(np.float32)
    b[3, 2] = 1e-40  # subnormal
    theirs = (torch.from_numpy(b) @ torch.from_numpy(a)).numpy()
    assert np.array_equal(lora_product(b, a).view(np.uint32), theirs.view(np.uint32))
    b2 = RNG.standard_normal((20, 4)).astype(np.float32)
    a2 = RNG.standard_normal((4, 30)).astype(np.float32)
    b2[1, 1], a2[2, 3] = np.inf, np.nan
    ours = lora_product(b2, a2)
    theirs = (torch.from_numpy(b2) @ torch.from_numpy(a2)).numpy()
    assert np.array_equal(np.isnan(ours), np.isnan(theirs))
    finite = ~np.isnan(ours)
    assert np.array_equal(ours[finite], theirs[finite])


def test_lora_product_rejects_mismatched_factors() -> None:
    with pytest.raises(InvalidArgument, match="do not chain"):
        lora_product(np.ones((3, 2), np.float32), np.ones((3, 4), np.float32))


@pytest.mark.parametrize("dtype", ["F32", "F16", "BF16"])
@pytest.mark.parametrize("mode", ["linear", "fan_in_fan_out", "embedding"])
def test_merge_reproduces_peft_arithmetic(dtype: str, mode: str) -> None:
    """peft's CPU merge, written out in torch: Linear adds the float32 delta into W;
    Embedding rounds the delta to W's dtype first."""
    torch = pytest.importorskip("torch")
    tdtype = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}[dtype]
    out_f, in_f, rank = 96, 80, 8
    scaling = 7 / math.sqrt(rank)  # not a power of two: exercises the float32 multiply
    a = torch.from_numpy((RNG.standard_normal((rank, in_f)) * 0.05).astype(np.float32))
    b = torch.from_numpy((RNG.standard_normal((out_f, rank)) * 0.05).astype(np.float32))
    transposed = mode != "linear"
    shape = (in_f, out_f) if transposed else (out_f, in_f)
    weight = torch.from_numpy(RNG.standard_normal(shape).astype(np.float32) * 0.1).to(tdtype)
    expected = weight.clone()
    delta = b @ a
    delta = (delta.T if transposed else delta) * scaling
    if mode == "embedding":
        expected += delta.to(tdtype)
    else:
        expected += delta
    raw = weight.view(torch.int16).numpy().view(np.uint16) if dtype == "BF16" else weight.numpy()
    left, right = lora_factors(a.numpy(), b.numpy(), transposed=transposed)  # as the view does
    ours = merge_rows(raw, left, right, scaling, dtype=dtype, round_delta=mode == "embedding")
    theirs = expected.view(torch.int16 if dtype != "F32" else torch.int32).numpy()
    assert ours.tobytes() == theirs.tobytes()


# -- adapter config --------------------------------------------------------------------------


def _config(**overrides: Any) -> bytes:
    doc: dict[str, Any] = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj"],
        "use_dora": False,
        "lora_bias": False,
        "layer_replication": None,
        "init_lora_weights": True,
    }
    doc.update(overrides)
    return json.dumps(doc).encode()


def test_config_basics_and_scaling() -> None:
    config = AdapterConfig.from_json(_config())
    assert (config.r, config.lora_alpha, config.use_rslora) == (8, 16, False)
    assert config.scaling_for("model.layers.0.self_attn.q_proj") == 2.0
    rs = AdapterConfig.from_json(_config(use_rslora=True, r=6, lora_alpha=7))
    assert rs.scaling_for("x") == 7 / math.sqrt(6)


def test_rank_and_alpha_patterns_follow_peft() -> None:
    config = AdapterConfig.from_json(
        _config(
            rank_pattern={"q_proj": 4, "layers.1.mlp.down_proj": 2, r"layers\.[23]\..*v_proj": 3},
            alpha_pattern={"v_proj": 5},
        )
    )
    assert config.rank_for("model.layers.0.self_attn.q_proj") == 4
    assert config.rank_for("model.layers.0.self_attn.xq_proj") == 8  # dotted suffix only
    assert config.rank_for("model.layers.1.mlp.down_proj") == 2
    assert config.rank_for("model.layers.11.mlp.down_proj") == 8
    assert config.rank_for("model.layers.2.self_attn.v_proj") == 3
    assert config.alpha_for("model.layers.2.self_attn.v_proj") == 5
    assert config.scaling_for("model.layers.2.self_attn.v_proj") == 5 / 3
    assert config.scaling_for("model.layers.0.self_attn.k_proj") == 2.0


def test_pattern_matching_agrees_with_peft() -> None:
    other = pytest.importorskip("peft.utils.other")
    patterns = ["q_proj", "layers.1.mlp.down_proj", r"layers\.[23]\..*v_proj", "proj"]
    config = AdapterConfig.from_json(
        _config(rank_pattern={p: i + 1 for i, p in enumerate(patterns)})
    )
    for module in [
        "model.layers.0.self_attn.q_proj",
        "model.layers.1.mlp.down_proj",
        "model.layers.11.mlp.down_proj",
        "model.layers.3.self_attn.v_proj",
        "model.layers.0.self_attn.k_proj",
        "lm_head",
    ]:
        key = other.get_pattern_key(patterns, module)
        expected = patterns.index(key) + 1 if key in patterns else 8
        assert config.rank_for(module) == expected, module


def test_target_modules_forms() -> None:
    listed = AdapterConfig.from_json(_config(target_modules=["q_proj", "model.lm_head"]))
    assert listed.targets("model.layers.0.self_attn.q_proj")
    assert listed.targets("model.lm_head")
    assert not listed.targets("model.layers.0.self_attn.xq_proj")
    regex = AdapterConfig.from_json(_config(target_modules=r".*\.(q|v)_proj"))
    assert regex.targets("model.layers.0.self_attn.v_proj")
    assert not regex.targets("model.layers.0.self_attn.k_proj")
    assert AdapterConfig.from_json(_config(target_modules="all-linear")).targets("anything")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"peft_type": "IA3"}, "only LoRA"),
        ({"use_dora": True}, "DoRA"),
        ({"lora_bias": True}, "lora_bias"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
        ({"r": 0}, "positive integer"),
        ({"r": -4}, "positive integer"),
        ({"r": "8"}, "positive integer"),
        ({"r": True}, "positive integer"),
        ({"lora_alpha": "16"}, "finite number"),
        ({"use_rslora": "yes"}, "true or false"),
        ({"init_lora_weights": "pissa_niter_4"}, "rewrites the base weights"),
        ({"init_lora_weights": "olora"}, "rewrites the base weights"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
        ({"some_future_option": {"x": 1}}, "unknown adapter option"),
        ({"rank_pattern": {"(": 4}}, "invalid regular expression"),
        ({"rank_pattern": {"q": 0}}, "positive integer"),
        ({"target_modules": [1]}, "list of module names"),
        ({"bias": "some"}, "bias"),
    ],
)
def test_config_rejections(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        AdapterConfig.from_json(_config(**overrides))


def test_config_must_be_a_json_object() -> None:
    with pytest.raises(InvalidArgument, match="valid JSON"):
        AdapterConfig.from_json(b"{")
    with pytest.raises(InvalidArgument, match="JSON object"):
        AdapterConfig.from_json(b"[]")


def test_config_ignores_harmless_options() -> None:
    config = AdapterConfig.from_json(
        _config(
            init_lora_weights="gaussian",
            lora_dropout=0.1,
            loftq_config={},
            task_type="CAUSAL_LM",
            target_parameters=None,
            new_thing=None,
            base_model_name_or_path="meta/llama",
        )
    )
    assert config.base_model_name_or_path == "meta/llama"


# -- adapter tensor names --------------------------------------------------------------------

P = "base_model.model."


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (
            P + "model.layers.0.self_attn.q_proj.lora_A.weight",
            AdapterKey(
                Role.LORA_A,
                "model.layers.0.self_attn.q_proj",
                "model.layers.0.self_attn.q_proj.weight",
            ),
        ),
        (
            P + "model.layers.0.mlp.down_proj.lora_B.default.weight",
            AdapterKey(
                Role.LORA_B, "model.layers.0.mlp.down_proj", "model.layers.0.mlp.down_proj.weight"
            ),
        ),
        (
            P + "model.embed_tokens.lora_embedding_A",
            AdapterKey(Role.EMBEDDING_A, "model.embed_tokens", "model.embed_tokens.weight"),
        ),
        (
            P + "model.embed_tokens.lora_embedding_B.default",
            AdapterKey(Role.EMBEDDING_B, "model.embed_tokens", "model.embed_tokens.weight"),
        ),
        (P + "lm_head.weight", AdapterKey(Role.REPLACEMENT, "lm_head", "lm_head.weight")),
        (
            P + "model.embed_tokens.base_layer.weight",
            AdapterKey(Role.BASE_LAYER, "model.embed_tokens", "model.embed_tokens.weight"),
        ),
        (
            P + "score.modules_to_save.default.weight",
            AdapterKey(Role.REPLACEMENT, "score", "score.weight"),
        ),
        (
            P + "encoder.layer.0.output.dense.bias",
            AdapterKey(
                Role.REPLACEMENT,
                "encoder.layer.0.output.dense",
                "encoder.layer.0.output.dense.bias",
            ),
        ),
    ],
)
def test_adapter_key_mapping(key: str, expected: AdapterKey) -> None:
    assert parse_adapter_key(key) == expected


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("model.layers.0.q_proj.lora_A.weight", "does not start with"),
        (P + "model.layers.0.q_proj.lora_magnitude_vector", "DoRA"),
        (P + "model.layers.0.q_proj.lora_B.bias", "unsupported LoRA variant"),
        (P + "model.embed_tokens.token_adapter.trainable_tokens_delta", "unsupported"),
        (P + "weight", "names no module"),
    ],
)
def test_adapter_key_rejections(key: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_adapter_key(key)


# -- validate_merge --------------------------------------------------------------------------


def _base() -> dict[str, bytes]:
    return {
        "config.json": b"{}",
        "model.safetensors": safetensors_bytes(
            {
                "model.layers.0.self_attn.q_proj.weight": (
                    "BF16",
                    bf16(RNG.standard_normal((6, 4))),
                ),
                "model.layers.0.self_attn.v_proj.weight": (
                    "BF16",
                    bf16(RNG.standard_normal((2, 4))),
                ),
                "model.norm.weight": ("F32", np.ones(4)),
                "lm_head.weight": ("BF16", bf16(RNG.standard_normal((10, 4)))),
            }
        ),
        "pytorch_model.bin": b"pickled unmerged weights",
    }


def _adapter(_tensors: dict[str, Any] | None = None, **config: Any) -> dict[str, bytes]:
    doc = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"]}
    doc.update(config)
    tensors = _tensors or {
        P + "model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", np.ones((2, 4))),
        P + "model.layers.0.self_attn.q_proj.lora_B.weight": ("F32", np.ones((6, 2))),
    }
    return adapter_files(doc, tensors)


def test_validate_merge_summary() -> None:
    tensors = {
        P + "model.layers.0.self_attn.q_proj.lora_A.weight": ("F32", np.ones((2, 4))),
        P + "model.layers.0.self_attn.q_proj.lora_B.weight": ("BF16", bf16(np.ones((6, 2)))),
        P + "lm_head.weight": ("F32", np.ones((10, 4))),
    }
    summary = validate_merge(
        memory_sources(_base()),
        memory_sources(_adapter(modules_to_save=["lm_head"], _tensors=tensors)),
    )
    assert summary.merged_tensors == ("model.layers.0.self_attn.q_proj.weight",)
    assert summary.replaced_tensors == ("lm_head.weight",)
    assert summary.shards == ("model.safetensors",)
    assert summary.passthrough == ("config.json",)
    assert summary.dropped == ("pytorch_model.bin",)
    assert summary.total_size == len(_base()["model.safetensors"]) + 2
    assert summary.config.r == 2


def _lora(module: str, a_shape: tuple[int, ...], b_shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        P + module + ".lora_A.weight": ("F32", np.ones(a_shape)),
        P + module + ".lora_B.weight": ("F32", np.ones(b_shape)),
    }


Q = "model.layers.0.self_attn.q_proj"


@pytest.mark.parametrize(
    ("config", "tensors", "message"),
    [
        ({}, _lora(Q, (2, 5), (6, 2)), "has shape"),
        ({}, _lora(Q, (2, 4), (6, 3)), "rank"),
        ({"r": 3}, _lora(Q, (2, 4), (6, 2)), "rank"),
        ({}, _lora("model.layers.0.self_attn.k_proj", (2, 4), (6, 2)), "does not have"),
        ({}, {P + Q + ".lora_A.weight": ("F32", np.ones((2, 4)))}, "exactly one lora_A"),
        ({"target_modules": ["v_proj"]}, _lora(Q, (2, 4), (6, 2)), "does not select"),
        ({}, {P + "lm_head.weight": ("F32", np.ones((10, 4)))}, "modules_to_save"),
        (
            {"modules_to_save": ["lm_head"]},
            {P + "lm_head.weight": ("F32", np.ones((10, 5)))},
            "shape",
        ),
        (
            {"modules_to_save": ["lm_head"]},
            {P + "lm_head.weight": ("I64", np.ones((10, 4)))},
            "cannot replace",
        ),
        (
            {},
            {**_lora(Q, (2, 4), (6, 2)), P + Q + ".lora_A.weight": ("F64", np.ones((2, 4)))},
            "dtype",
        ),
        ({"target_modules": ["norm"]}, _lora("model.norm", (2, 1), (4, 2)), "has shape"),
    ],
)
def test_validate_merge_rejections(
    config: dict[str, Any], tensors: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_merge(
            memory_sources(_base()), memory_sources(_adapter(**config, _tensors=tensors))
        )


def test_a_saved_base_layer_must_keep_the_base_shape() -> None:
    resized = {
        **_lora(Q, (2, 4), (6, 2)),
        P + Q + ".base_layer.weight": ("F32", np.ones((7, 4))),
    }
    with pytest.raises(InvalidArgument, match="resized"):
        validate_merge(memory_sources(_base()), memory_sources(_adapter(_tensors=resized)))
    same = {**_lora(Q, (2, 4), (6, 2)), P + Q + ".base_layer.weight": ("F32", np.ones((6, 4)))}
    summary = validate_merge(memory_sources(_base()), memory_sources(_adapter(_tensors=same)))
    assert summary.merged_tensors == (Q + ".weight",)
    assert summary.replaced_tensors == ()


def test_validate_merge_rejects_missing_files() -> None:
    adapter = _adapter()
    with pytest.raises(InvalidArgument, match=r"adapter_config\.json"):
        validate_merge(
            memory_sources(_base()),
            memory_sources({"adapter_model.safetensors": adapter["adapter_model.safetensors"]}),
        )
    with pytest.raises(InvalidArgument, match=r"adapter_model\.safetensors"):
        validate_merge(
            memory_sources(_base()),
            memory_sources({"adapter_config.json": adapter["adapter_config.json"]}),
        )
    with pytest.raises(InvalidArgument, match=r"no \.safetensors"):
        validate_merge(memory_sources({"config.json": b"{}"}), memory_sources(adapter))


def test_validate_merge_checks_the_shard_index() -> None:
    base = _base()
    index = {"metadata": {}, "weight_map": {"lm_head.weight": "model-00002.safetensors"}}
    base["model.safetensors.index.json"] = json.dumps(index).encode()
    with pytest.raises(InvalidArgument, match="index"):
        validate_merge(memory_sources(base), memory_sources(_adapter()))
