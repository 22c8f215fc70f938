"""Issues #4 and #13: the merged LoRA download (``checkpoint=merged``) against the stored
archive of the same base and against peft, in one run.

A bf16 Llama-shaped base model of random weights (hidden 2048, intermediate 5632, vocab 32000,
8 layers: 1.01 GiB; ``--quick``: vocab 8000, 2 layers, 0.26 GiB) and a rank-16 LoRA adapter on
q, k, v, o, gate, up and down (random non-zero A and B, float32, laid out as peft's
``save_pretrained`` writes them) are generated with NumPy (``bench.merge_data``). Measured:

1. **peft**: ``from_pretrained`` + ``PeftModel.from_pretrained`` + ``merge_and_unload`` +
   ``save_pretrained`` (bf16, on CPU, torch's default threads) in a child process; imports
   timed separately and *excluded* from the comparison; peak RSS (VmHWM) of that process,
   imports included. A first run (cold library files) writes the reference output; the runs
   compared are a contender of the server rounds, so all see the same machine load.
2. **the view alone**, in a child process: ``merged_files`` read front to back with 1 MiB
   ``readinto`` calls into one reused buffer on one thread (the merge without any serving;
   wall and CPU time), then checked tensor by tensor against peft's output: every byte must
   be equal.
3. **the server** (``bench.merge_server``): the base pushed with ``weightport models push``,
   the adapter imported as a LoRA fine-tune and the base itself as a Full one; rounds of
   ``GET /v1/finetune/download?checkpoint=merged`` and of the Full fine-tune's stored archive
   (the same base read from disk) with curl, interleaved with peft; then concurrent merged
   downloads, then slow clients that are killed mid-transfer. Peak RSS (VmHWM) per phase.
   With ``--baseline-src`` a second server runs another source tree in the same rounds.

Targets: the merged download ≥ 0.5× the stored archive (#13; median of per-round ratios) and
≥ 1.5× peft's merged-model bytes per second (#4), and the server's peak RSS ≤ 4 × the largest
tensor + 300 MB. Throughputs are merged-model bytes (10**6 per MB) per second of wall time;
the page cache is warm for all.

    .venv/bin/python -m bench.merge_stream [--quick] [--reps N] [--layers L]
        [--concurrency N] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    GB,
    MiB,
    Row,
    Sample,
    cpu_per_gb,
    machine_info,
    markdown_table,
    median,
    python_child,
    rows_json,
    scratch_dir,
    tree_bytes,
    warm_page_cache,
    write_results,
)
from bench.merge_data import FULL, QUICK, Shape, make_adapter, make_base
from bench.merge_server import run_servers
from weightport.storage.files import PathSource

NAME = "merge_stream"
SPEEDUP_TARGET = 1.5
STORED_RATIO_TARGET = 0.5
RSS_SLACK_MB = 300
MB = 1e6


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
    for rep in range(-1, int(reps)):  # an untimed first pass: compiling, first reads
        if rep == 0:
            cpu_began = time.process_time()
        began = time.perf_counter()
        for source in files.values():
            size = source.size
            for offset in range(0, size, MiB):
                n = min(MiB, size - offset)
                source.readinto(offset, view[:n])
        if rep >= 0:
            seconds.append(time.perf_counter() - began)
    cpu = time.process_time() - cpu_began
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
        "cpu_seconds": cpu,
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


def run_view(
    base: Path, adapter: Path, peft_out: Path, reps: int, src: Path | None = None
) -> dict[str, Any]:
    """The view alone in a child process (weightport imported from ``src`` if given)."""
    return python_child(_VIEW_CHILD, [str(base), str(adapter), str(peft_out), str(reps)], src)


# ---------------------------------------------------------------- the run


def run(
    quick: bool = False,
    reps: int | None = None,
    layers: int | None = None,
    concurrency: int = 3,
    baseline_src: Path | None = None,
) -> dict[str, Any]:
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
        model_bytes = tree_bytes(base)
        # The first peft run also pays for cold library files; its output is the oracle the
        # view is checked against. The others are a contender of the server rounds.
        peft_runs = [run_peft(base, adapter, merged)]
        views = {"after": run_view(base, adapter, merged, reps)}
        if baseline_src is not None:
            views["before"] = run_view(base, adapter, merged, reps, baseline_src)

        def peft_again() -> tuple[int, float]:
            again = tmp / "peft-again"
            shutil.rmtree(again, ignore_errors=True)
            peft_runs.append(run_peft(base, adapter, again))
            return model_bytes, peft_runs[-1].total

        servers = run_servers(
            tmp,
            base,
            adapter,
            reps=reps,
            concurrency=concurrency,
            baseline_src=baseline_src,
            peft=peft_again,
        )
        peft_bytes = tree_bytes(merged)
    raw = {
        "shape": asdict(shape),
        "model_bytes": model_bytes,
        "peft_output_bytes": peft_bytes,
        "largest_tensor_bytes": largest,
        "baseline_src": None if baseline_src is None else str(baseline_src),
        "peft": [asdict(p) for p in peft_runs],
        "view": views,
        "servers": servers.to_json(),
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
    servers = raw["servers"]
    rounds = {name: [Sample(**s) for s in samples] for name, samples in servers["rounds"].items()}
    labels = list(servers["idle_rss_mib"])  # "after", then "before" if measured
    peft_runs = raw["peft"][1:] or raw["peft"]  # the interleaved runs (warm), if any
    peft_seconds = median([p["total"] for p in peft_runs])
    peft_mbps = model / peft_seconds / MB
    largest = raw["largest_tensor_bytes"]
    rss_limit = (4 * largest / MB + RSS_SLACK_MB) * MB / MiB
    rows = [
        Row(NAME, "base model size", model / MiB, "MiB"),
        Row(NAME, "largest tensor", largest / MB, "MB"),
        Row(NAME, "merged archive (stored)", servers["archive_bytes"]["after"] / MiB, "MiB"),
        Row(NAME, "peft load+merge+save (imports excluded)", peft_seconds, "s"),
        Row(NAME, "peft, as merged-model throughput", peft_mbps, "MB/s"),
    ]
    for label in labels:
        merged, stored = rounds[f"merged {label}"], rounds[f"stored {label}"]
        # Merged-model bytes per second (the archive adds ~0.01 % of tar framing).
        merged_mbps = [model / s.seconds / MB for s in merged]
        stored_mbps = [model / s.seconds / MB for s in stored]
        ratio = median([a / b for a, b in zip(merged_mbps, stored_mbps, strict=True)])
        vs_peft = median(merged_mbps) / peft_mbps
        view = raw["view"][label]
        view_mbps = median([model / s for s in view["seconds"]]) / MB
        view_cpu = view["cpu_seconds"] / (len(view["seconds"]) * model / GB)
        exact = view["tensors_differing"] == 0 and view["tensors_compared"] == view["peft_tensors"]
        both = len(labels) > 1
        tag = f" ({label})" if both else ""
        con = servers["concurrent"][label]
        slow = servers["slow_then_gone"][label]
        con_mbps = con["count"] * model / con["wall"] / MB
        fairness = min(con["each"]) / max(con["each"])
        peak = max(servers["rounds_peak_rss_mib"][label], con["peak_rss_mib"], slow["peak"])
        rows += [
            Row(NAME, f"merged download{tag}", median(merged_mbps), _ranged("MB/s", merged_mbps)),
            Row(
                NAME,
                f"stored archive of the base{tag}",
                median(stored_mbps),
                _ranged("MB/s", stored_mbps),
            ),
            Row(
                NAME,
                f"merged ÷ stored{tag}",
                ratio,
                "×",
                f"≥ {STORED_RATIO_TARGET}" if label == "after" else "",
                ratio >= STORED_RATIO_TARGET if label == "after" else None,
            ),
            Row(NAME, f"merged: server CPU{tag}", cpu_per_gb(merged), "core-s/GB"),
            Row(NAME, f"stored: server CPU{tag}", cpu_per_gb(stored), "core-s/GB"),
            Row(
                NAME,
                f"merged download ÷ peft{tag}",
                vs_peft,
                "×",
                f"≥ {SPEEDUP_TARGET}" if label == "after" else "",
                vs_peft >= SPEEDUP_TARGET if label == "after" else None,
            ),
            Row(NAME, f"merged view alone (1 MiB readinto){tag}", view_mbps, "MB/s"),
            Row(NAME, f"merged view alone: CPU{tag}", view_cpu, "core-s/GB"),
            Row(NAME, f"view process peak RSS{tag}", view["peak_rss_mib"], "MiB"),
            Row(NAME, f"{con['count']} concurrent merged downloads{tag}", con_mbps, "MB/s total"),
            Row(NAME, f"  slowest ÷ fastest of them{tag}", fairness, "×"),
            Row(NAME, f"server RSS idle{tag}", servers["idle_rss_mib"][label], "MiB"),
            Row(
                NAME,
                f"server peak RSS, all download phases{tag}",
                peak,
                "MiB",
                f"≤ {rss_limit:.0f} (4 × largest + 300 MB)",
                peak <= rss_limit,
            ),
            Row(
                NAME,
                f"  peak in the rounds / {con['count']} concurrent / {slow['count']} slow{tag}",
                servers["rounds_peak_rss_mib"][label],
                f"/ {con['peak_rss_mib']:.0f} / {slow['peak']:.0f} MiB",
            ),
            Row(
                NAME,
                f"RSS before {slow['count']} slow clients / while they lag / after killed{tag}",
                slow["before"],
                f"/ {slow['lagging']:.0f} / {slow['after']:.0f} MiB",
            ),
            Row(NAME, f"merged tensors bit-identical to peft{tag}", float(exact), "", "1", exact),
        ]
    if len(labels) > 1:
        same = len(set(servers["merged_sha256"].values())) == 1
        rows.append(Row(NAME, "merged files: before == after (sha256)", float(same), "", "1", same))
    return rows


def _ranged(unit: str, values: Sequence[float]) -> str:
    return f"{unit} ({min(values):.0f}–{max(values):.0f})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.merge_stream", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a 0.26 GiB base (smoke run)")
    parser.add_argument("--reps", type=int, default=None, help="downloads and view passes (3)")
    parser.add_argument("--layers", type=int, default=None, help="override the layer count")
    parser.add_argument(
        "--concurrency", type=int, default=3, help="merged downloads at once, and slow clients"
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a src/ folder of another weightport version, measured in the same rounds",
    )
    args = parser.parse_args(argv)
    payload = run(
        quick=args.quick,
        reps=args.reps,
        layers=args.layers,
        concurrency=args.concurrency,
        baseline_src=args.baseline_src,
    )
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
