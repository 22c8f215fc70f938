"""Issue #13 goal 3: a compressed archive build against the ``zstd`` CLI at the same level and
threads, over the same tar bytes, in one run.

A synthetic checkpoint (``bench.checkpoint_data``: bf16 weights, a BPE-shaped tokenizer; 1 GiB
of weights, 256 MiB with ``--quick``) is stored as blobs in a local store, as the server keeps
them, and its archive plan's tar is also written to a file. Interleaved rounds of:

- **weightport**: a child process runs ``compress_archive`` over the plan (members read from
  the store) into a store upload (sha256 of the output, written to a temp file) and commits
  it (fsync, rename) — what the server's background build does, without HTTP or the catalog;
- **before** (with ``--baseline-src``): the same child importing another source tree;
- **zstd CLI**: ``zstd -q -T<threads> -<level> -c TAR > FILE``;
- **zstd CLI + sha256** (informational): ``zstd … -c TAR | tee FILE | openssl sha256``, the
  CLI doing what a build must: a content-addressed store needs the sha256 of the archive.

Throughput is tar bytes per second. The build is timed without and with its commit (the
fsync of ~0.8 GB is disk time the CLI, writing to the page cache, does not spend); the ratio
against the CLI is the median of the per-round ratios. Checked every round: the archive's
blob key (sha256) is the same for every weightport contender; once: it decompresses to the
tar. Outputs are deleted after each round.

    .venv/bin/python -m bench.archive_build [--quick] [--reps N] [--level L] [--threads T]
        [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.checkpoint_data import make_checkpoint
from bench.common import (
    GB,
    GiB,
    MiB,
    Row,
    machine_info,
    markdown_table,
    median,
    python_child,
    rows_json,
    scratch_dir,
    warm_page_cache,
    write_results,
)
from weightport.archive import ArchiveMember, ArchivePlan
from weightport.storage.base import BlobSource
from weightport.storage.local import LocalStore

NAME = "archive_build"
TARGET = 0.95

_BUILD_CHILD = r"""
import json, sys, time
from bench.archive_build import build_child
print(json.dumps(build_child(*sys.argv[1:])))
"""


def _plan(store: LocalStore, manifest: dict[str, list[Any]]) -> ArchivePlan:
    members = [
        ArchiveMember(name, BlobSource(store, key, size), key)
        for name, (key, size) in manifest.items()
    ]
    return ArchivePlan.build("checkpoint", members)


def build_child(store_dir: str, manifest: str, level: str, threads: str) -> dict[str, Any]:
    """In a fresh process: one build into the store; the timings and the blob it made."""
    from weightport.archive import compress_archive

    store = LocalStore(Path(store_dir))
    plan = _plan(store, json.loads(Path(manifest).read_text()))
    cpu = time.process_time()
    began = time.perf_counter()
    upload = store.begin_upload()
    index = compress_archive(plan, upload, level=int(level), threads=int(threads))
    compressed = time.perf_counter() - began
    info = upload.commit()
    committed = time.perf_counter() - began
    cpu = time.process_time() - cpu
    store.delete(info.key)
    return {
        "seconds": compressed,
        "with_commit": committed,
        "cpu": cpu,
        "key": info.key,
        "size": info.size,
        "frames": len(index.frames),
        "tar_size": plan.tar_size,
    }


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_build(tmp: Path, level: int, threads: int, src: Path | None) -> dict[str, Any]:
    args = [str(tmp / "store"), str(tmp / "manifest.json"), str(level), str(threads)]
    return python_child(_BUILD_CHILD, args, src)


def run_cli(tmp: Path, level: int, threads: int) -> dict[str, Any]:
    out = tmp / "cli.tar.zst"
    cpu = _children_cpu()
    began = time.perf_counter()
    with out.open("wb") as sink:
        subprocess.run(
            ["zstd", "-q", f"-T{threads}", f"-{level}", "-c", str(tmp / "checkpoint.tar")],
            stdout=sink,
            check=True,
        )
    seconds = time.perf_counter() - began
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "cpu": _children_cpu() - cpu, "size": size}


def run_cli_hashed(tmp: Path, level: int, threads: int) -> dict[str, Any]:
    out = tmp / "cli.tar.zst"
    zstd = f"zstd -q -T{threads} -{level} -c {tmp / 'checkpoint.tar'}"
    cpu = _children_cpu()
    began = time.perf_counter()
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{zstd} | tee {out} | openssl sha256 > /dev/null"],
        check=True,
    )
    seconds = time.perf_counter() - began
    size = out.stat().st_size
    out.unlink()
    return {"seconds": seconds, "cpu": _children_cpu() - cpu, "size": size}


def _prepare(tmp: Path, weights: int) -> tuple[int, str]:
    """Checkpoint → blobs in a store + manifest + the plan's tar as a file; (tar size, sha)."""
    make_checkpoint(tmp / "checkpoint", weights)
    store = LocalStore(tmp / "store")
    manifest: dict[str, list[Any]] = {}
    for path in sorted((tmp / "checkpoint").iterdir()):
        with store.begin_upload() as upload, path.open("rb") as source:
            while data := source.read(8 * MiB):
                upload.write(data)
            info = upload.commit()
        manifest[path.name] = [info.key, info.size]
        path.unlink()
    (tmp / "manifest.json").write_text(json.dumps(manifest))
    tar = _plan(store, manifest).tar_source()
    digest = hashlib.sha256()
    buf = bytearray(8 * MiB)
    with (tmp / "checkpoint.tar").open("wb") as out:
        for offset in range(0, tar.size, len(buf)):
            view = memoryview(buf)[: min(len(buf), tar.size - offset)]
            tar.readinto(offset, view)
            out.write(view)
            digest.update(view)
    blobs = sorted(p for p in (tmp / "store").rglob("*") if p.is_file())
    warm_page_cache(tmp / "checkpoint.tar", *blobs)
    return tar.size, digest.hexdigest()


def _decodes_to_the_tar(tmp: Path, level: int, threads: int, tar_sha: str) -> bool:
    """One extra build, kept: zstd -d of the blob must give the tar."""
    from weightport.archive import compress_archive

    store = LocalStore(tmp / "store")
    plan = _plan(store, json.loads((tmp / "manifest.json").read_text()))
    with store.begin_upload() as upload:
        compress_archive(plan, upload, level=level, threads=threads)
        info = upload.commit()
    decoded = subprocess.run(
        ["zstd", "-q", "-d", "-c", str(store.local_path(info.key))],
        capture_output=True,
        check=True,
    ).stdout
    store.delete(info.key)
    return hashlib.sha256(decoded).hexdigest() == tar_sha


def run(
    quick: bool = False,
    reps: int | None = None,
    level: int = 3,
    threads: int = 2,
    baseline_src: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    weights = 256 * MiB if quick else GiB
    reps = reps or (5 if quick else 3)
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        tar_size, tar_sha = _prepare(tmp, weights)
        contenders: dict[str, Callable[[], dict[str, Any]]] = {
            "weightport": lambda: run_build(tmp, level, threads, None),
            "zstd CLI": lambda: run_cli(tmp, level, threads),
            "zstd CLI + sha256": lambda: run_cli_hashed(tmp, level, threads),
        }
        if baseline_src is not None:
            contenders["before"] = lambda: run_build(tmp, level, threads, baseline_src)
        for contender in contenders.values():
            contender()  # warm-up: imports, the page cache
        names = list(contenders)
        rounds: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for rep in range(reps):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                rounds[name].append(contenders[name]())
        decodes = _decodes_to_the_tar(tmp, level, threads, tar_sha)
    raw = {"tar_size": tar_size, "level": level, "threads": threads, "rounds": rounds}
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "reps": reps,
        "baseline_src": None if baseline_src is None else str(baseline_src),
        "seconds": time.perf_counter() - started,
        "raw": raw,
        "decodes_to_the_tar": decodes,
        "rows": rows_json(_rows(raw, decodes)),
    }


def _rows(raw: dict[str, Any], decodes: bool) -> list[Row]:
    size, level, threads = raw["tar_size"], raw["level"], raw["threads"]
    rounds = raw["rounds"]
    cli = rounds["zstd CLI"]
    gb = size / GB

    def mbps(seconds: Sequence[float]) -> list[float]:
        return [size / s / 1e6 for s in seconds]

    cli_mbps = mbps([r["seconds"] for r in cli])
    hashed = rounds["zstd CLI + sha256"]
    hashed_mbps = mbps([r["seconds"] for r in hashed])
    rows = [
        Row(NAME, "tar size", size / MiB, "MiB"),
        Row(NAME, f"zstd -T{threads} -{level} (CLI)", median(cli_mbps), _ranged(cli_mbps)),
        Row(NAME, "zstd CLI: CPU", sum(r["cpu"] for r in cli) / (gb * len(cli)), "core-s/GB"),
        Row(NAME, "zstd CLI | tee | openssl sha256", median(hashed_mbps), _ranged(hashed_mbps)),
        Row(NAME, "  its CPU", sum(r["cpu"] for r in hashed) / (gb * len(hashed)), "core-s/GB"),
    ]
    for name in ("weightport", "before"):
        if name not in rounds:
            continue
        ours = rounds[name]
        tag = "" if name == "weightport" else " (before)"
        build = mbps([r["seconds"] for r in ours])
        committed = mbps([r["with_commit"] for r in ours])
        ratio = median([a / b for a, b in zip(build, cli_mbps, strict=True)])
        ratio_commit = median([a / b for a, b in zip(committed, cli_mbps, strict=True)])
        target = f"≥ {TARGET}" if name == "weightport" else ""
        ratio_hashed = median([a / b for a, b in zip(build, hashed_mbps, strict=True)])
        rows += [
            Row(NAME, f"build L{level} T{threads}{tag}", median(build), _ranged(build)),
            Row(
                NAME,
                f"build ÷ zstd CLI{tag}",
                ratio,
                "×",
                target,
                ratio >= TARGET if target else None,
            ),
            Row(NAME, f"build ÷ zstd CLI + sha256{tag}", ratio_hashed, "×"),
            Row(NAME, f"build + commit (fsync){tag}", median(committed), _ranged(committed)),
            Row(NAME, f"build + commit ÷ zstd CLI{tag}", ratio_commit, "×"),
            Row(
                NAME,
                f"build: CPU{tag}",
                sum(r["cpu"] for r in ours) / (gb * len(ours)),
                "core-s/GB",
            ),
            Row(NAME, f"archive ÷ CLI output size{tag}", ours[0]["size"] / cli[0]["size"], "×"),
        ]
    keys = {r["key"] for name in ("weightport", "before") for r in rounds.get(name, [])}
    rows += [
        Row(NAME, "every build: the same bytes", float(len(keys) == 1), "", "1", len(keys) == 1),
        Row(NAME, "the archive decodes to the tar", float(decodes), "", "1", decodes),
    ]
    return rows


def _ranged(values: Sequence[float]) -> str:
    return f"MB/s ({min(values):.0f}–{max(values):.0f})"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_build", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB of weights")
    parser.add_argument("--reps", type=int, default=None, help="rounds (3; 5 with --quick)")
    parser.add_argument("--level", type=int, default=3, help="zstd level (3)")
    parser.add_argument("--threads", type=int, default=2, help="zstd threads (2)")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a src/ folder of another weightport version, built in the same rounds",
    )
    args = parser.parse_args(argv)
    payload = run(args.quick, args.reps, args.level, args.threads, args.baseline_src)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
