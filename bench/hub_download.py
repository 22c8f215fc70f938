"""Issue #10: the Hugging Face endpoint, as ``hf download`` (huggingface_hub 2.4) sees it.

A 2 GiB sharded bf16 checkpoint (``--quick``: 256 MiB) is pushed as a model, and a rank-16 LoRA
adapter on every q/v projection is imported as a fine-tune of it. Measured, interleaved:

1. **plain**: ``hf download admin/bench-base --local-dir DIR`` from weightport, against the
   same command fetching the same files from **nginx** serving a static mirror: weightport's
   own repo-info and tree answers saved as files, and each file with the ``X-Repo-Commit`` /
   ``X-Linked-Etag`` headers the client needs (sendfile on, no access log). Target ≥ 0.9×.
2. **merged**: ``hf download admin/<ft>`` (the merged model, computed on the fly) against the
   Together route's merged download of the same fine-tune, fetched by ``curl -o FILE`` (one
   stream; the target's reference) and by the official ``together fine-tuning download``.
   All write to the same disk; throughput is model bytes per second. Target ≥ 0.8× curl.
3. **HEAD latency**: sequential ``HEAD /hf/{repo}/resolve/main/{file}`` on one keep-alive
   connection, for a stored file and for a merged shard (p50, p99). Target p99 < 10 ms.

Each ``hf download`` is a fresh process with a fresh cache and target folder (its start-up is
part of both sides). The page cache is warm for every contender.

    .venv/bin/python -m bench.hub_download [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from safetensors.numpy import save

from bench.checkpoint_data import HIDDEN, make_checkpoint
from bench.common import (
    GiB,
    MiB,
    Row,
    Sample,
    cpu_per_gb,
    interleaved,
    machine_info,
    markdown_table,
    median,
    paired_ratio,
    rows_json,
    samples_json,
    scratch_dir,
    tree_bytes,
    warm_page_cache,
    write_results,
)
from bench.servers import Nginx, WeightportServer

NAME = "hub_download"
PLAIN_TARGET, MERGED_TARGET, HEAD_P99_MS = 0.9, 0.8, 10.0
RANK, ALPHA = 16, 32
HF = Path(sys.executable).with_name("hf")
TOGETHER = Path(sys.executable).with_name("together")


def make_adapter(folder: Path, layers: int, seed: int = 1) -> None:
    """A peft LoRA adapter (float32 factors) on every q_proj and v_proj of the checkpoint."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            a = rng.standard_normal((RANK, HIDDEN), dtype=np.float32) * np.float32(0.02)
            b = rng.standard_normal((HIDDEN, RANK), dtype=np.float32) * np.float32(0.02)
            tensors[f"{prefix}.lora_A.weight"], tensors[f"{prefix}.lora_B.weight"] = a, b
    (folder / "adapter_model.safetensors").write_bytes(save(tensors, metadata={"format": "pt"}))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "bench-base",
        "r": RANK,
        "lora_alpha": ALPHA,
        "target_modules": ["q_proj", "v_proj"],
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


class HubMirror(Nginx):
    """nginx serving a static copy of one repository at one commit, with the HF headers."""

    def __init__(self, root: Path, workdir: Path, repo: str, commit: str, etags: dict[str, str]):
        super().__init__(root, workdir)
        self.repo, self.commit, self.etags = repo, commit, etags

    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/hf"

    def config(self) -> str:
        api = f"/hf/api/models/{self.repo}"
        locations = [
            f"location = {api}/revision/main {{ default_type application/json; "
            f"alias {self.root}/info.json; }}",
            f"location = {api}/tree/{self.commit} {{ default_type application/json; "
            f"alias {self.root}/tree.json; }}",
        ]
        for path, etag in self.etags.items():
            locations.append(
                f"location = /hf/{self.repo}/resolve/{self.commit}/{path} {{ "
                f"add_header X-Repo-Commit {self.commit}; "
                f"add_header X-Linked-Etag '\"{etag}\"'; "
                f"alias {self.root}/files/{path}; }}"
            )
        server = "\n        ".join(locations)
        return (
            super().config().replace(f"root {self.root};", f"root {self.root};\n        {server}")
        )


def hf_env(endpoint: str, key: str, home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=endpoint,
        HF_TOKEN=key,
        HF_HOME=str(home),
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
    )
    return env


Fetch = Callable[[], tuple[int, float]]


def hf_download(endpoint: str, key: str, repo: str, work: Path, expect: int) -> Fetch:
    """A contender: one fresh ``hf download`` process into a fresh folder."""

    def run() -> tuple[int, float]:
        target, home = work / "target", work / "home"
        shutil.rmtree(work, ignore_errors=True)
        began = time.perf_counter()
        subprocess.run(
            [str(HF), "download", repo, "--local-dir", str(target), "--quiet"],
            env=hf_env(endpoint, key, home),
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - began
        got = sum(p.stat().st_size for p in target.rglob("*") if ".cache" not in p.parts)
        if got != expect:
            raise RuntimeError(f"hf download of {repo} got {got} bytes, expected {expect}")
        shutil.rmtree(work, ignore_errors=True)
        return got, seconds

    return run


def curl_to_file(url: str, key: str, target: Path, model_bytes: int) -> Fetch:
    """A contender: ``curl -o FILE`` of the Together merged archive (counted as model bytes)."""

    def run() -> tuple[int, float]:
        began = time.perf_counter()
        subprocess.run(
            ["curl", "-sSf", "-H", f"Authorization: Bearer {key}", "-o", str(target), url],
            check=True,
        )
        seconds = time.perf_counter() - began
        target.unlink()
        return model_bytes, seconds

    return run


def together_cli(base_url: str, key: str, ft_id: str, work: Path, model_bytes: int) -> Fetch:
    """A contender: the official ``together fine-tuning download`` of the merged archive."""
    env = {
        **os.environ,
        "HOME": str(work),
        "TOGETHER_BASE_URL": base_url,
        "TOGETHER_API_KEY": key,
        "TOGETHER_TELEMETRY_DISABLED": "1",
        "TOGETHER_DISABLE_VERSION_CHECK": "1",
        "NO_COLOR": "1",
    }

    def run() -> tuple[int, float]:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        target = work / "merged.tar.zst"
        began = time.perf_counter()
        subprocess.run(
            [str(TOGETHER), "fine-tuning", "download", ft_id, "-o", str(target)],
            env=env,
            cwd=work,
            check=True,
            capture_output=True,
        )
        seconds = time.perf_counter() - began
        shutil.rmtree(work, ignore_errors=True)
        return model_bytes, seconds

    return run


def head_latencies(url: str, key: str, count: int) -> list[float]:
    """Milliseconds of ``count`` sequential HEADs on one keep-alive connection."""
    pool = urllib3.PoolManager(maxsize=1, retries=False)
    headers = {"Authorization": f"Bearer {key}", "Accept-Encoding": "identity"}
    times: list[float] = []
    for index in range(count + 50):
        began = time.perf_counter()
        response = pool.request("HEAD", url, headers=headers)
        elapsed = (time.perf_counter() - began) * 1000
        if response.status != 200 or "X-Repo-Commit" not in response.headers:
            raise RuntimeError(f"HEAD {url}: {response.status}")
        if index >= 50:  # the first ones warm the caches and the connection
            times.append(elapsed)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(statistics.quantiles(values, n=100)[int(q) - 1])


@dataclass(frozen=True)
class Measured:
    model_bytes: int
    plain: dict[str, list[Sample]]
    merged: dict[str, list[Sample]]
    heads: dict[str, list[float]]


def _mirror(server: WeightportServer, www: Path, ckpt: Path, work: Path) -> HubMirror:
    """Save weightport's answers for bench-base and serve them with the files from nginx."""
    http = urllib3.PoolManager()
    api = f"{server.base_url}/hf/api/models/admin/bench-base"
    info = http.request("GET", f"{api}/revision/main", headers=server.auth()).data
    commit = json.loads(info)["sha"]
    tree = http.request(
        "GET", f"{api}/tree/{commit}?recursive=true&expand=false", headers=server.auth()
    ).data
    (www / "info.json").write_bytes(info)
    (www / "tree.json").write_bytes(tree)
    etags = {e["path"]: e["lfs"]["oid"] for e in json.loads(tree) if e["type"] == "file"}
    files = www / "files"
    files.mkdir()
    for path in etags:
        os.link(ckpt / path, files / path)  # the same inode: one page-cache copy for both
    for entry in [www, files, *files.iterdir()]:
        entry.chmod(0o755 if entry.is_dir() else 0o644)
    return HubMirror(www, work, "admin/bench-base", commit, etags)


def _measure(server: WeightportServer, tmp: Path, ckpt: Path, reps: int, heads: int) -> Measured:
    server.publish(ckpt, "bench-base")
    data = ["--data-dir", str(server.data_dir)]
    imported = server.cli(
        "finetunes", "import", *data, "--base-model", "bench-base", "--final", f"1={tmp}/adapter"
    )
    ft_id = imported.strip().splitlines()[-1]
    model_bytes = tree_bytes(ckpt)
    www = tmp / "www"
    www.mkdir(mode=0o755)
    mirror = _mirror(server, www, ckpt, tmp / "nginx")
    mirror.start()
    try:
        warm_page_cache(*sorted(ckpt.iterdir()))
        wp, key = f"{server.base_url}/hf", server.admin_key
        base = "admin/bench-base"
        contenders = {
            "weightport": (server.pid, hf_download(wp, key, base, tmp / "a", model_bytes)),
            "nginx": (
                mirror.pid,
                hf_download(mirror.endpoint(), key, base, tmp / "b", model_bytes),
            ),
        }
        for _, fetch in contenders.values():
            fetch()  # warm-up: interpreter files, page cache, the server's code paths
        plain = interleaved(reps, contenders)
        together = f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
        fine_tune = f"admin/{ft_id}"
        archive = tmp / "m.tar.zst"
        merged_contenders = {
            "hf_merged": (server.pid, hf_download(wp, key, fine_tune, tmp / "c", model_bytes)),
            "together_merged": (server.pid, curl_to_file(together, key, archive, model_bytes)),
            "together_cli": (
                server.pid,
                together_cli(server.base_url, key, ft_id, tmp / "d", model_bytes),
            ),
        }
        for _, fetch in merged_contenders.values():
            fetch()
        merged = interleaved(reps, merged_contenders)
    finally:
        mirror.stop()
    shard = sorted(p.name for p in ckpt.glob("*.safetensors"))[0]
    latencies = {
        "stored": head_latencies(f"{wp}/admin/bench-base/resolve/main/config.json", key, heads),
        "merged": head_latencies(f"{wp}/admin/{ft_id}/resolve/main/{shard}", key, heads),
    }
    return Measured(model_bytes, plain, merged, latencies)


def run(quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    weights = 256 * MiB if quick else 2 * GiB
    reps = reps or (2 if quick else 3)
    heads = 300 if quick else 2000
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        ckpt = tmp / "checkpoint"
        make_checkpoint(ckpt, weights)
        layers = json.loads((ckpt / "config.json").read_text())["num_hidden_layers"]
        make_adapter(tmp / "adapter", layers)
        server = WeightportServer(tmp / "data")
        try:
            server.start()
            measured = _measure(server, tmp, ckpt, reps, heads)
        finally:
            server.stop()
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "reps": reps,
        "seconds": time.perf_counter() - started,
        "raw": {
            "model_bytes": measured.model_bytes,
            **{k: samples_json(v) for k, v in {**measured.plain, **measured.merged}.items()},
            "head_ms": {
                k: {"p50": median(v), "p99": percentile(v, 99), "max": max(v)}
                for k, v in measured.heads.items()
            },
        },
        "rows": rows_json(_rows(measured)),
    }


def _speed(samples: list[Sample]) -> float:
    return median([s.gbps for s in samples])


def _rows(m: Measured) -> list[Row]:
    plain = paired_ratio(m.plain["weightport"], m.plain["nginx"])
    merged = paired_ratio(m.merged["hf_merged"], m.merged["together_merged"])
    merged_ok = merged >= MERGED_TARGET
    by_cli = paired_ratio(m.merged["hf_merged"], m.merged["together_cli"])
    rows = [
        Row(NAME, "model size", m.model_bytes / MiB, "MiB"),
        Row(NAME, "hf download, weightport", _speed(m.plain["weightport"]), "GB/s"),
        Row(NAME, "hf download, nginx mirror", _speed(m.plain["nginx"]), "GB/s"),
        Row(NAME, "weightport ÷ nginx", plain, "×", f"≥ {PLAIN_TARGET}", plain >= PLAIN_TARGET),
        Row(NAME, "weightport: server CPU", cpu_per_gb(m.plain["weightport"]), "core-s/GB"),
        Row(NAME, "nginx: server CPU", cpu_per_gb(m.plain["nginx"]), "core-s/GB"),
        Row(NAME, "hf download, merged", _speed(m.merged["hf_merged"]), "GB/s"),
        Row(NAME, "Together merged archive (curl)", _speed(m.merged["together_merged"]), "GB/s"),
        Row(NAME, "hf merged ÷ Together merged", merged, "×", f"≥ {MERGED_TARGET}", merged_ok),
        Row(NAME, "together CLI merged", _speed(m.merged["together_cli"]), "GB/s"),
        Row(NAME, "hf merged ÷ together CLI merged", by_cli, "×"),
    ]
    for kind, values in m.heads.items():
        p99 = percentile(values, 99)
        rows.append(Row(NAME, f"HEAD {kind} p50", median(values), "ms"))
        ok = p99 < HEAD_P99_MS
        rows.append(Row(NAME, f"HEAD {kind} p99", p99, "ms", f"< {HEAD_P99_MS:g} ms", ok))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hub_download", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB instead of 2 GiB")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps)
    print(f"results: {write_results(NAME, payload)}", file=sys.stderr)
    rows = [Row(**row) for row in payload["rows"]]
    print(markdown_table(rows))
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
