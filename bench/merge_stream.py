"""Issue #4: the merged LoRA download (``checkpoint=merged``) against peft, in one run.

A bf16 Llama-shaped base model of random weights (hidden 2048, intermediate 5632, vocab 32000,
8 layers: 1.01 GiB; ``--quick``: vocab 8000, 2 layers, 0.26 GiB) and a rank-16 LoRA adapter on
q, k, v, o, gate, up and down (random non-zero A and B, float32, laid out as peft's
``save_pretrained`` writes them) are generated with NumPy. Measured:

1. **peft**: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
   ``save_pretrained`` (bf16, on CPU, torch's default threads) in a child process; imports
   timed separately and *excluded* from the comparison; peak RSS (VmHWM) of that process,
   imports included. A first run (cold library files) writes the reference output; the runs
   compared are made between the downloads of step 3, so both see the same machine load.
2. **the view alone**, in a child process: ``merged_files`` read front to back with 1 MiB
   ``readinto`` calls into one reused buffer (the merge without any serving), then checked
   tensor by tensor against peft's output: every byte must be equal.
3. **the server**: the base pushed with ``weightport models push``, the adapter imported with
   ``weightport finetunes import``, then ``GET /v1/finetune/download?checkpoint=merged`` with
   curl; the server's peak RSS (VmHWM, restarted before the downloads, and over its life).

Targets (issue #4): the download (median) ≥ 1.5× peft's merged-model bytes per second
(median of the interleaved runs), and the server's peak RSS ≤ 4 × the largest tensor + 300 MB.
Throughputs are merged-model bytes (10**6 per MB) per second of wall time; the page cache is
warm for both.

    .venv/bin/python -m bench.merge_stream [--quick] [--reps N] [--layers L]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    MiB,
    Row,
    Transfer,
    curl_get,
    machine_info,
    markdown_table,
    median,
    peak_rss_mib,
    reset_peak_rss,
    rows_json,
    rss_mib,
    scratch_dir,
    tree_bytes,
    warm_page_cache,
    write_results,
)
from bench.servers import WeightportServer
from weightport.storage.files import PathSource

NAME = "merge_stream"
SPEEDUP_TARGET = 1.5
RSS_SLACK_MB = 300
MB = 1e6
REPO = Path(__file__).resolve().parent.parent
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


# ---------------------------------------------------------------- peft (the reference)

_PEFT_CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import torch, transformers, peft
transformers.utils.logging.set_verbosity_error()
t1 = time.perf_counter()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
base, adapter, out = sys.argv[1:4]
rss_after_imports = status("VmRSS")
t2 = time.perf_counter()
model = transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
model = peft.PeftModel.from_pretrained(model, adapter)
t3 = time.perf_counter()
merged = model.merge_and_unload()
t4 = time.perf_counter()
merged.save_pretrained(out)
t5 = time.perf_counter()
print(json.dumps({
    "imports": t1 - t0, "load": t3 - t2, "merge": t4 - t3, "save": t5 - t4, "total": t5 - t2,
    "rss_after_imports_mib": rss_after_imports, "peak_rss_mib": status("VmHWM"),
    "torch_threads": torch.get_num_threads(),
}))
"""


@dataclass(frozen=True)
class PeftRun:
    """One peft run: seconds per phase (imports excluded from ``total``) and memory."""

    imports: float
    load: float
    merge: float
    save: float
    total: float
    rss_after_imports_mib: float
    peak_rss_mib: float
    torch_threads: int


def run_peft(base: Path, adapter: Path, out: Path) -> PeftRun:
    done = subprocess.run(
        [sys.executable, "-c", _PEFT_CHILD, str(base), str(adapter), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode:
        raise RuntimeError(f"peft merge failed:\n{done.stderr[-3000:]}")
    return PeftRun(**json.loads(done.stdout.strip().splitlines()[-1]))


# ---------------------------------------------------------------- the view alone

_VIEW_CHILD = r"""
import json, sys
from bench.merge_stream import view_child
print(json.dumps(view_child(*sys.argv[1:])))
"""


def _file_sources(root: Path) -> dict[str, Any]:
    return {p.name: PathSource(p) for p in sorted(root.iterdir()) if p.is_file()}


def view_child(base: str, adapter: str, peft_out: str, reps: str) -> dict[str, Any]:
    """In a fresh process: stream the merged view ``reps`` times, then compare with peft."""
    from weightport.merge import merged_files, read_header

    files = merged_files(_file_sources(Path(base)), _file_sources(Path(adapter)))
    total = sum(s.size for s in files.values())
    buf = bytearray(MiB)
    view = memoryview(buf)
    seconds = []
    for _ in range(int(reps)):
        began = time.perf_counter()
        for source in files.values():
            size = source.size
            for offset in range(0, size, MiB):
                n = min(MiB, size - offset)
                source.readinto(offset, view[:n])
        seconds.append(time.perf_counter() - began)
    streaming_peak = _status_mib("VmHWM")  # before the comparison below holds whole tensors
    # Bit-exactness against peft: every tensor of every merged shard.
    theirs_files = _file_sources(Path(peft_out))
    theirs: dict[str, tuple[Any, Any]] = {}
    for path, source in theirs_files.items():
        if path.endswith(".safetensors"):
            for t in read_header(source).tensors:
                theirs[t.name] = (source, t)
    compared = differing = 0
    for path, source in files.items():
        if not path.endswith(".safetensors"):
            continue
        for t in read_header(source).tensors:
            other_source, other = theirs[t.name]
            if (t.dtype, t.shape) != (other.dtype, other.shape):
                differing += 1
                continue
            mine, ref = bytearray(t.nbytes), bytearray(t.nbytes)
            source.readinto(t.begin, memoryview(mine))
            other_source.readinto(other.begin, memoryview(ref))
            compared += 1
            differing += mine != ref
    return {
        "bytes": total,
        "seconds": seconds,
        "peak_rss_mib": streaming_peak,
        "tensors_compared": compared,
        "tensors_differing": differing,
        "peft_tensors": len(theirs),
    }


def _status_mib(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def run_view(base: Path, adapter: Path, peft_out: Path, reps: int) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _VIEW_CHILD, str(base), str(adapter), str(peft_out), str(reps)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if done.returncode:
        raise RuntimeError(f"view child failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- through the server


def run_server(
    tmp: Path, base: Path, adapter: Path, reps: int, between: Callable[[], None]
) -> tuple[list[Transfer], dict[str, float]]:
    """Push, import, download ``reps`` times (``between()`` runs between two downloads: the
    peft runs, interleaved so that both see the same machine); the transfers and the
    server's RSS figures."""
    server = WeightportServer(tmp / "data", env={"WEIGHTPORT_ARCHIVE_ENCODING": "stored"})
    try:
        server.start()
        server.publish(base, "base")
        out = server.cli(
            "finetunes",
            "import",
            "--data-dir",
            str(server.data_dir),
            "--base-model",
            "base",
            "--final",
            f"1={adapter}",
        )
        ft_id = out.strip().splitlines()[-1]
        url = f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
        idle = rss_mib(server.pid)
        life_before = peak_rss_mib(server.pid)
        reset_peak_rss(server.pid)
        transfers: list[Transfer] = []
        for rep in range(reps):
            if rep:
                between()
            transfers.append(curl_get(url, headers=server.auth()))
        if len({t.size for t in transfers}) != 1:
            raise RuntimeError(f"downloads differ in size: {transfers}")
        rss = {
            "idle": idle,
            "peak_before_downloads": life_before,
            "peak_during_downloads": peak_rss_mib(server.pid),
        }
    finally:
        server.stop()
    return transfers, rss


# ---------------------------------------------------------------- the run


def run(quick: bool = False, reps: int | None = None, layers: int | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    shape = QUICK if quick else FULL
    if layers is not None:
        shape = Shape(shape.hidden, shape.intermediate, layers, shape.vocab)
    reps = reps or 3
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        base, adapter, merged = tmp / "base", tmp / "adapter", tmp / "peft-merged"
        largest = make_base(base, shape)
        make_adapter(adapter, shape)
        warm_page_cache(*sorted(base.iterdir()), *sorted(adapter.iterdir()))
        # The first peft run also pays for cold library files; its output is the oracle the
        # view is checked against. The others run between the downloads.
        peft_runs = [run_peft(base, adapter, merged)]
        view = run_view(base, adapter, merged, reps)

        def peft_again() -> None:
            again = tmp / "peft-again"
            shutil.rmtree(again, ignore_errors=True)
            peft_runs.append(run_peft(base, adapter, again))

        transfers, rss = run_server(tmp, base, adapter, reps, peft_again)
        model_bytes = tree_bytes(base)
        peft_bytes = tree_bytes(merged)
    raw = {
        "shape": asdict(shape),
        "model_bytes": model_bytes,
        "peft_output_bytes": peft_bytes,
        "largest_tensor_bytes": largest,
        "peft": [asdict(p) for p in peft_runs],
        "view": view,
        "downloads": [asdict(t) for t in transfers],
        "server_rss_mib": rss,
    }
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "reps": reps,
        "seconds": time.perf_counter() - started,
        "raw": raw,
        "rows": rows_json(_rows(raw)),
    }


def _rows(raw: dict[str, Any]) -> list[Row]:
    model = raw["model_bytes"]
    peft_runs = raw["peft"][1:] or raw["peft"]  # the interleaved runs (warm), if any
    peft_seconds = median([p["total"] for p in peft_runs])
    best_peft = min(raw["peft"], key=lambda p: p["total"])
    peft_mbps = model / peft_seconds / MB
    downloads = raw["downloads"]
    archive = downloads[0]["size"]
    # Merged-model bytes per second for both (the archive adds ~0.01 % of tar framing).
    ours_mbps = median([model / d["seconds"] for d in downloads]) / MB
    view = raw["view"]
    view_mbps = median([model / s for s in view["seconds"]]) / MB
    ratio = ours_mbps / peft_mbps
    worst_case = ours_mbps / (model / best_peft["total"] / MB)
    largest_mb = raw["largest_tensor_bytes"] / MB
    rss_limit = (4 * raw["largest_tensor_bytes"] / MB + RSS_SLACK_MB) * MB / MiB
    rss = raw["server_rss_mib"]
    exact = view["tensors_differing"] == 0 and view["tensors_compared"] == view["peft_tensors"]
    phase = {k: median([p[k] for p in peft_runs]) for k in ("load", "merge", "save", "imports")}
    return [
        Row(NAME, "base model size", model / MiB, "MiB"),
        Row(NAME, "largest tensor", largest_mb, "MB"),
        Row(NAME, "merged archive (stored)", archive / MiB, "MiB"),
        Row(NAME, "merged download via server (curl)", ours_mbps, "MB/s"),
        Row(NAME, "merged view alone (1 MiB readinto)", view_mbps, "MB/s"),
        Row(NAME, "peft load+merge+save (imports excluded)", peft_seconds, "s"),
        Row(NAME, "peft: load (base + adapter)", phase["load"], "s"),
        Row(NAME, "peft: merge_and_unload", phase["merge"], "s"),
        Row(NAME, "peft: save_pretrained", phase["save"], "s"),
        Row(NAME, "peft imports (excluded)", phase["imports"], "s"),
        Row(NAME, "peft, as merged-model throughput", peft_mbps, "MB/s"),
        Row(NAME, "download ÷ peft", ratio, "×", f"≥ {SPEEDUP_TARGET}", ratio >= SPEEDUP_TARGET),
        Row(NAME, "download ÷ fastest peft run", worst_case, "×"),
        Row(
            NAME,
            "server peak RSS during downloads",
            rss["peak_during_downloads"],
            "MiB",
            f"≤ {rss_limit:.0f} MiB (4 × largest + 300 MB)",
            rss["peak_during_downloads"] <= rss_limit,
        ),
        Row(
            NAME,
            "server peak RSS over its life (push included)",
            rss["peak_before_downloads"],
            "MiB",
        ),
        Row(NAME, "server RSS idle", rss["idle"], "MiB"),
        Row(NAME, "view process peak RSS (streaming)", view["peak_rss_mib"], "MiB"),
        Row(NAME, "peft peak RSS (imports included)", best_peft["peak_rss_mib"], "MiB"),
        Row(NAME, "peft RSS after imports", best_peft["rss_after_imports_mib"], "MiB"),
        Row(NAME, "merged tensors bit-identical to peft", float(exact), "", "1", exact),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.merge_stream", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 0.26 GiB base (smoke run)")
    parser.add_argument("--reps", type=int, default=None, help="downloads and view passes (3)")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count")
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps, layers=args.layers)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
