"""Issue #3: the Together archive download (one deterministic .tar.zst per checkpoint).

A synthetic bf16 checkpoint (see ``bench.checkpoint_data``) is published as a base model and
imported as a Full fine-tune of it (identical files: the content-addressed store keeps one
copy, so both name the same blobs). Measured in one run, against references in the same run:

1. the *stored* archive (raw zstd blocks, computed per request) downloaded with curl, and
   its time to first byte, against ``tar -cf - DIR | zstd -T0 -1`` on the same files (and
   the blob route serving the largest shard, in the same rounds);
2. a *compressed* build (``POST /weightport/v1/fine-tunes/{id}/archives``, polled until
   ready) against ``tar -cf - DIR | zstd -T<threads> -<level>`` at the server's settings;
3. the cached compressed archive downloaded against the blob route serving a model file;
4. the server's CPU per GB and its peak RSS in each phase.

    .venv/bin/python -m bench.archive_download [--quick] [--reps N] [--level L] [--threads T]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

from bench.checkpoint_data import make_checkpoint
from bench.common import (
    GB,
    GiB,
    MiB,
    Row,
    Sample,
    Transfer,
    cpu_per_gb,
    cpu_seconds,
    curl_get,
    interleaved,
    machine_info,
    markdown_table,
    median,
    paired_ratio,
    peak_rss_mib,
    reset_peak_rss,
    rows_json,
    rss_mib,
    samples_json,
    scratch_dir,
    tree_bytes,
    warm_page_cache,
    write_results,
)
from bench.servers import WeightportServer

NAME = "archive_download"
RSS_GROWTH_LIMIT_MIB = 256
SERVE_RATIO = 0.9
BUILD_TIMEOUT_S = 900


@dataclass(frozen=True)
class Pipe:
    """One ``tar | zstd`` run read to the end: total time, first output byte, bytes out,
    and the CPU seconds tar and zstd used."""

    seconds: float
    ttfb: float
    out_bytes: int
    cpu: float


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tar_zstd(folder: Path, level: int, threads: int) -> Pipe:
    """``tar -cf - FOLDER | zstd -LEVEL -TTHREADS``, its output drained by this process.

    (Not ``> /dev/null``: GNU tar notices /dev/null and skips reading the files.)
    """
    cpu_before = _children_cpu()
    began = time.perf_counter()
    tar = subprocess.Popen(
        ["tar", "-cf", "-", "-C", str(folder.parent), folder.name], stdout=subprocess.PIPE
    )
    zstd = subprocess.Popen(
        ["zstd", "-q", f"-{level}", f"-T{threads}", "-c"],
        stdin=tar.stdout,
        stdout=subprocess.PIPE,
        bufsize=0,  # raw pipe: readinto returns as soon as any bytes arrive
    )
    assert tar.stdout is not None and zstd.stdout is not None
    tar.stdout.close()  # zstd holds the pipe now; tar sees SIGPIPE if zstd dies
    out = cast(io.FileIO, zstd.stdout)  # bufsize=0 makes it the raw FileIO
    buf = bytearray(MiB)
    total = out.readinto(buf) or 0
    ttfb = time.perf_counter() - began
    while count := out.readinto(buf):
        total += count
    seconds = time.perf_counter() - began
    if zstd.wait() or tar.wait():
        raise RuntimeError(f"tar | zstd failed: {tar.returncode}, {zstd.returncode}")
    return Pipe(seconds, ttfb, total, _children_cpu() - cpu_before)


def _build(server: WeightportServer, ft_id: str) -> dict[str, Any]:
    """Queue the compressed build and poll the fine-tune until it is ready."""
    server.api(
        "POST", f"/weightport/v1/fine-tunes/{ft_id}/archives", {"checkpoint": "model_output_path"}
    )
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while time.monotonic() < deadline:
        builds = server.api("GET", f"/v1/fine-tunes/{ft_id}")["weightport_archives"]
        states = {b["state"] for b in builds}
        if "failed" in states:
            raise RuntimeError(f"archive build failed: {builds}")
        if builds and states == {"ready"}:
            build: dict[str, Any] = builds[0]
            return build
        time.sleep(0.2)
    raise RuntimeError("archive build did not finish in time")


@dataclass
class Phase:
    """Peak RSS of the server over one phase (VmHWM restarted on entry)."""

    server: WeightportServer
    peak_rss: float = 0.0

    def __enter__(self) -> Phase:
        reset_peak_rss(self.server.pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.peak_rss = peak_rss_mib(self.server.pid)


@dataclass
class Measured:
    """Everything one run measured (raw), for the JSON and the rows."""

    checkpoint_bytes: int
    stored_bytes: int
    cold_ttfb: float
    stored: list[Transfer]
    fast: list[Pipe]
    stored_rounds: dict[str, list[Sample]]
    build: dict[str, Any]
    build_seconds: float
    build_cpu: float
    cli_build: Pipe
    cached_vs_blob: dict[str, list[Sample]]
    rss: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "checkpoint_bytes": self.checkpoint_bytes,
            "stored_archive_bytes": self.stored_bytes,
            "cold_stored_ttfb": self.cold_ttfb,
            "stored": [asdict(t) for t in self.stored],
            "tar_zstd_1": [asdict(p) for p in self.fast],
            "stored_rounds": {k: samples_json(v) for k, v in self.stored_rounds.items()},
            "build": self.build,
            "build_seconds": self.build_seconds,
            "build_cpu_s": self.build_cpu,
            "tar_zstd_build_settings": asdict(self.cli_build),
            "cached_vs_blob": {k: samples_json(v) for k, v in self.cached_vs_blob.items()},
            "rss_mib": self.rss,
        }


def _fetch(url: str, size: int, headers: dict[str, str]) -> Callable[[], tuple[int, float]]:
    """A contender's fetch: one curl GET of ``url``, checked to be ``size`` bytes."""

    def run() -> tuple[int, float]:
        transfer = curl_get(url, headers=headers, expect_size=size)
        return transfer.size, transfer.seconds

    return run


def _measure(server: WeightportServer, ckpt: Path, reps: int, level: int, threads: int) -> Measured:
    """Publish, import, then the three phases; the server is running."""
    total = tree_bytes(ckpt)
    server.publish(ckpt, "bench-base")
    ft_id = server.import_finetune("bench-base", ckpt, full=True)
    url = f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=model_output_path"
    auth = server.auth()
    warm_page_cache(*sorted(ckpt.iterdir()))
    idle_rss = rss_mib(server.pid)
    cold = curl_get(url, headers=auth)  # the first request computes the archive plan
    tar_zstd(ckpt, 1, 0)  # warm-up of the reference

    largest = max(ckpt.glob("*.safetensors"), key=lambda p: p.stat().st_size)
    blob_url = server.signed_urls("bench-base")[largest.name]
    blob_fetch = _fetch(blob_url, largest.stat().st_size, {})
    blob_fetch()  # warm-up
    stored: list[Transfer] = []
    fast: list[Pipe] = []

    def fetch_stored() -> tuple[int, float]:
        stored.append(curl_get(url, headers=auth, expect_size=cold.size))
        return total, stored[-1].seconds

    def fetch_fast() -> tuple[int, float]:
        fast.append(tar_zstd(ckpt, 1, 0))
        return total, fast[-1].seconds

    with Phase(server) as stored_phase:
        stored_rounds = interleaved(
            reps,
            {
                "stored": (server.pid, fetch_stored),
                "tar_zstd": (None, fetch_fast),
                "blob": (server.pid, blob_fetch),
            },
        )

    with Phase(server) as build_phase:
        cpu_before = cpu_seconds(server.pid)
        began = time.perf_counter()
        build = _build(server, ft_id)
        build_seconds = time.perf_counter() - began
        build_cpu = cpu_seconds(server.pid) - cpu_before
    cli_build = tar_zstd(ckpt, level, threads)

    cached_fetch = _fetch(url, build["size"], auth)
    cached_fetch()  # warm-up: the first read of the freshly built archive
    with Phase(server) as cached_phase:
        cached_vs_blob = interleaved(
            reps, {"cached": (server.pid, cached_fetch), "blob": (server.pid, blob_fetch)}
        )
    return Measured(
        checkpoint_bytes=total,
        stored_bytes=cold.size,
        cold_ttfb=cold.ttfb,
        stored=stored,
        fast=fast,
        stored_rounds=stored_rounds,
        build=build,
        build_seconds=build_seconds,
        build_cpu=build_cpu,
        cli_build=cli_build,
        cached_vs_blob=cached_vs_blob,
        rss={
            "idle": idle_rss,
            "stored_phase_peak": stored_phase.peak_rss,
            "build_phase_peak": build_phase.peak_rss,
            "cached_phase_peak": cached_phase.peak_rss,
        },
    )


def run(
    quick: bool = False, reps: int | None = None, level: int = 3, threads: int = 2
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    weights = 256 * MiB if quick else 2 * GiB
    reps = reps or (5 if quick else 3)
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        ckpt = tmp / "checkpoint"
        make_checkpoint(ckpt, weights)
        env = {
            "WEIGHTPORT_ARCHIVE_ENCODING": "auto",
            "WEIGHTPORT_ARCHIVE_LEVEL": str(level),
            "WEIGHTPORT_ARCHIVE_THREADS": str(threads),
        }
        server = WeightportServer(tmp / "data", env=env)
        try:
            server.start()
            measured = _measure(server, ckpt, reps, level, threads)
        finally:
            server.stop()
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "reps": reps,
        "level": level,
        "threads": threads,
        "seconds": time.perf_counter() - started,
        "raw": measured.to_json(),
        "rows": rows_json(_rows(measured, level, threads)),
    }


def _rows(m: Measured, level: int, threads: int) -> list[Row]:
    gb = m.checkpoint_bytes / GB
    stored, fast = m.stored_rounds["stored"], m.stored_rounds["tar_zstd"]
    first_blob = m.stored_rounds["blob"]
    speedup = paired_ratio(stored, fast)
    stored_ttfb = median([t.ttfb for t in m.stored])
    fast_ttfb = median([p.ttfb for p in m.fast])
    fast_seconds = median([p.seconds for p in m.fast])
    fast_ratio = m.checkpoint_bytes / median([p.out_bytes for p in m.fast])
    fast_cpu = sum(p.cpu for p in m.fast) / (gb * len(m.fast))
    cli = m.cli_build
    cached, blob = m.cached_vs_blob["cached"], m.cached_vs_blob["blob"]
    serve_ratio = paired_ratio(cached, blob)
    growth = max(v for k, v in m.rss.items() if k != "idle") - m.rss["idle"]
    build_label = f"level {level}, {threads} threads"
    return [
        Row(NAME, "checkpoint size", m.checkpoint_bytes / MiB, "MiB"),
        Row(NAME, "stored archive download", median([s.gbps for s in stored]), "ckpt GB/s"),
        Row(NAME, "tar | zstd -T0 -1 (reference)", median([s.gbps for s in fast]), "ckpt GB/s"),
        Row(NAME, "stored ÷ tar|zstd -1", speedup, "×", "≥ 1", speedup >= 1),
        Row(NAME, "stored: server CPU", cpu_per_gb(stored), "core-s/GB"),
        Row(NAME, "blob route, same rounds", median([s.gbps for s in first_blob]), "GB/s"),
        Row(NAME, "stored ÷ blob route", paired_ratio(stored, first_blob), "×"),
        Row(NAME, "blob route, same rounds: server CPU", cpu_per_gb(first_blob), "core-s/GB"),
        Row(NAME, "tar | zstd -1: CPU", fast_cpu, "core-s/GB"),
        Row(NAME, "tar | zstd -1 ratio", fast_ratio, ":1"),
        Row(NAME, "stored TTFB (plan cached)", stored_ttfb * 1000, "ms"),
        Row(NAME, "stored TTFB (first request, plan computed)", m.cold_ttfb * 1000, "ms"),
        Row(NAME, "tar | zstd -1: first byte", fast_ttfb * 1000, "ms"),
        Row(NAME, "tar | zstd -1: size known (whole run)", fast_seconds * 1000, "ms"),
        Row(NAME, f"build ({build_label})", gb / m.build_seconds, "ckpt GB/s"),
        Row(NAME, f"tar | zstd -T{threads} -{level} (reference)", gb / cli.seconds, "ckpt GB/s"),
        Row(NAME, "build ÷ zstd CLI", cli.seconds / m.build_seconds, "×"),
        Row(NAME, "build: server CPU", m.build_cpu / gb, "core-s/GB"),
        Row(NAME, f"tar | zstd -{level}: CPU", cli.cpu / gb, "core-s/GB"),
        Row(NAME, "compressed archive ratio", m.checkpoint_bytes / m.build["size"], ":1"),
        Row(NAME, f"tar | zstd -{level} ratio", m.checkpoint_bytes / cli.out_bytes, ":1"),
        Row(NAME, "cached compressed download", median([s.gbps for s in cached]), "GB/s"),
        Row(NAME, "blob route, largest shard", median([s.gbps for s in blob]), "GB/s"),
        Row(
            NAME,
            "cached ÷ blob route",
            serve_ratio,
            "×",
            f"≥ {SERVE_RATIO}",
            serve_ratio >= SERVE_RATIO,
        ),
        Row(NAME, "cached: server CPU", cpu_per_gb(cached), "core-s/GB"),
        Row(NAME, "blob route: server CPU", cpu_per_gb(blob), "core-s/GB"),
        Row(NAME, "server RSS idle", m.rss["idle"], "MiB"),
        Row(NAME, "server peak RSS: stored downloads", m.rss["stored_phase_peak"], "MiB"),
        Row(NAME, "server peak RSS: compressed build", m.rss["build_phase_peak"], "MiB"),
        Row(NAME, "server peak RSS: cached downloads", m.rss["cached_phase_peak"], "MiB"),
        Row(
            NAME,
            "peak RSS growth over idle",
            growth,
            "MiB",
            f"< {RSS_GROWTH_LIMIT_MIB}",
            growth < RSS_GROWTH_LIMIT_MIB,
        ),
    ]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.archive_download", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB of weights")
    parser.add_argument(
        "--reps", type=int, default=None, help="repetitions (default 3; 5 with --quick)"
    )
    parser.add_argument("--level", type=int, default=3, help="zstd level of the build")
    parser.add_argument("--threads", type=int, default=2, help="zstd threads of the build")
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps, level=args.level, threads=args.threads)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
