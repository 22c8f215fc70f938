"""Issue #5: weightport's own downloader against curl, aria2c and hf_transfer, to disk.

Four random 1 GiB files (256 MiB with ``--quick``) are published as one model through the
Fireworks flow on a ``weightport serve`` on loopback. Every contender downloads all four
through their signed URLs into a fresh directory under /tmp, as its own process (timed from
spawn to exit, so start-up is included for everyone), in interleaved rounds:

- ``weightport download model admin/bench -o DIR --quiet`` with its defaults (it lists the
  model, fetches the parts over parallel range requests and checks every file's sha256);
- ``curl -s -S -o FILE URL`` for each file in turn (no verification), then ``sha256sum`` of
  the four files, timed separately: "curl + sha256sum" is the verified reference;
- ``aria2c -x8 -s8 -k1M`` with all four URLs in one input file (its default ``-j 5`` runs
  them at once), ``--file-allocation=falloc`` (aria2's advice for ext4; its default writes
  zeros first), no checksum;
- ``hf_transfer.download(url, filename, max_files=8, chunk_size=10 MiB)`` for each file in
  turn, from one Python process (how huggingface_hub uses it), no verification.

Every output is checked outside the timing: sizes and sampled 64 KiB windows against the
server's bytes in every round, and a full sha256 of every contender's files in the warm-up.
Downloads are deleted after each fetch, so the disk does not fill and every contender meets
the same page-cache state. ``--variant 4x64M`` adds weightport with ``--connections 4
--part-size 64M`` to the same rounds (any number of them); ``--baseline-src DIR`` adds the
client of another source tree (``DIR`` first on its ``PYTHONPATH``), for before/after figures
taken in the same rounds.

    .venv/bin/python -m bench.downloader [--quick] [--reps N] [--variant CONNxPART ...]
        [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    GB,
    GiB,
    MiB,
    Row,
    Sample,
    interleaved,
    machine_info,
    markdown_table,
    median,
    paired_ratio,
    rows_json,
    samples_json,
    scratch_dir,
    write_random_file,
    write_results,
)
from bench.servers import WeightportServer

NAME = "downloader"
FILES = 4
MODEL = "bench"
TARGET_VS_HF = 1.2
TARGET_VS_CURL = 1.0
SAMPLE = 64 * 1024
ARIA2C = shutil.which("aria2c") or "/usr/bin/aria2c"
_VARIANT = re.compile(r"^(\d+|auto)x(\d+[KMG]?|auto)$", re.IGNORECASE)
_HF_SCRIPT = """
import sys, hf_transfer
args = sys.argv[1:]
for url, filename in zip(args[::2], args[1::2]):
    hf_transfer.download(url=url, filename=filename, max_files=8, chunk_size=10 * 1024 * 1024)
"""


def _children_cpu(*, user_only: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + (0.0 if user_only else usage.ru_stime)


def _weightport_cli() -> list[str]:
    script = Path(sys.executable).parent / "weightport"
    return [str(script)] if script.exists() else [sys.executable, "-m", "weightport"]


def _run(args: list[str], env: dict[str, str] | None = None) -> float:
    """Run a contender's command; 0.0: none of its time is the benchmark's own."""
    done = subprocess.run(args, capture_output=True, text=True, check=False, env=env)
    if done.returncode:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return 0.0


@dataclass(frozen=True)
class Model:
    """The published model: server, signed URLs, digests and sampled reference bytes.

    ``base_url`` is where clients reach the server (its own address, or a proxy in front of
    it); ``urls`` are the signed URLs through that same address.
    """

    server: WeightportServer
    base_url: str
    urls: dict[str, str]
    sha256: dict[str, str]
    file_size: int
    samples: dict[str, list[tuple[int, bytes]]]

    @property
    def total(self) -> int:
        return self.file_size * len(self.urls)


@dataclass
class Bench:
    """The contenders' fetches, plus what they measure beside the wall time."""

    model: Model
    work: Path
    client_cpu: dict[str, list[float]] = field(default_factory=dict)
    #: User time alone: the kernel's share (page-cache writes above all) is the noisy part.
    client_user: dict[str, list[float]] = field(default_factory=dict)
    sha_seconds: list[float] = field(default_factory=list)
    sha_cpu: list[float] = field(default_factory=list)
    sha_user: list[float] = field(default_factory=list)
    full_check: bool = False

    def contender(
        self, name: str, fetch: Callable[[Path], float]
    ) -> Callable[[], tuple[int, float]]:
        """Wrap ``fetch(dest)``: fresh directory, timed, CPU counted, output checked, deleted.

        ``fetch`` returns the seconds it spent on the benchmark's own checks (curl's
        sha256sum), which are not part of its download time.
        """

        def run() -> tuple[int, float]:
            dest = self.work / "out"
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            cpu, user = _children_cpu(), _children_cpu(user_only=True)
            began = time.perf_counter()
            excluded = fetch(dest)
            seconds = time.perf_counter() - began - excluded
            cpu = _children_cpu() - cpu - (self.sha_cpu[-1] if excluded else 0.0)
            user = _children_cpu(user_only=True) - user - (self.sha_user[-1] if excluded else 0.0)
            self.client_cpu.setdefault(name, []).append(cpu)
            self.client_user.setdefault(name, []).append(user)
            try:
                self.check(name, dest)
            finally:
                shutil.rmtree(dest, ignore_errors=True)  # frees its (dirty) page cache too
            return self.model.total, seconds

        return run

    def check(self, name: str, dest: Path) -> None:
        """Sizes and sampled bytes always; a full sha256 when ``full_check`` is set."""
        for relpath, expected in self.model.sha256.items():
            path = dest / relpath
            if path.stat().st_size != self.model.file_size:
                raise RuntimeError(f"{name}: {relpath} has {path.stat().st_size} bytes")
            with path.open("rb") as fh:
                for offset, data in self.model.samples[relpath]:
                    fh.seek(offset)
                    if fh.read(len(data)) != data:
                        raise RuntimeError(f"{name}: {relpath} differs at {offset}")
                if self.full_check:
                    fh.seek(0)
                    if hashlib.file_digest(fh, "sha256").hexdigest() != expected:
                        raise RuntimeError(f"{name}: {relpath} has the wrong sha256")

    # -- the contenders ----------------------------------------------------------------

    def weightport(
        self, extra: Sequence[str] = (), src: Path | None = None
    ) -> Callable[[Path], float]:
        """weightport's download command; ``src``: the client of that source tree instead."""
        args = [*_weightport_cli(), "download", "model", f"admin/{MODEL}", "--quiet"]
        args += ["--base-url", self.model.base_url, "--api-key", self.model.server.admin_key]
        args += extra
        env = None if src is None else {**os.environ, "PYTHONPATH": str(src)}
        return lambda dest: _run([*args, "-o", str(dest)], env)

    def curl(self, dest: Path) -> float:
        for relpath, url in self.model.urls.items():
            _run(["curl", "-s", "-S", "-o", str(dest / relpath), url])
        # The verified reference: hash what curl wrote (timed apart, reported as a sum).
        paths = [str(dest / relpath) for relpath in self.model.urls]
        cpu, user = _children_cpu(), _children_cpu(user_only=True)
        began = time.perf_counter()
        done = subprocess.run(["sha256sum", *paths], capture_output=True, text=True, check=True)
        self.sha_seconds.append(time.perf_counter() - began)
        self.sha_cpu.append(_children_cpu() - cpu)
        self.sha_user.append(_children_cpu(user_only=True) - user)
        digests = {}  # path -> sha256 ("DIGEST  PATH" per line)
        for line in done.stdout.splitlines():
            digest, path = line.split(maxsplit=1)
            digests[path] = digest
        if [digests[path] for path in paths] != [self.model.sha256[r] for r in self.model.urls]:
            raise RuntimeError("curl: sha256sum disagrees with the model's digests")
        return self.sha_seconds[-1]

    def aria2c(self, dest: Path) -> float:
        listing = dest.parent / "aria2c-input.txt"
        listing.write_text(
            "".join(f"{url}\n  out={relpath}\n" for relpath, url in self.model.urls.items())
        )
        args = [ARIA2C, "-q", "-x8", "-s8", "-k1M", "-d", str(dest), "-i", str(listing)]
        args += ["--allow-overwrite=true", "--auto-file-renaming=false"]
        args += ["--file-allocation=falloc", "--check-integrity=false"]
        return _run(args)

    def hf_transfer(self, dest: Path) -> float:
        pairs = [x for rel, url in self.model.urls.items() for x in (url, str(dest / rel))]
        return _run([sys.executable, "-c", _HF_SCRIPT, *pairs])


def publish_model(tmp: Path, file_size: int) -> tuple[WeightportServer, dict[str, str]]:
    """Random files published as ``admin/bench``; the source copies are removed afterwards."""
    source = tmp / "model"
    digests = {}
    for i in range(FILES):
        relpath = f"shard-{i + 1:05d}-of-{FILES:05d}.bin"
        write_random_file(source / relpath, file_size, seed=50 + i)
        with (source / relpath).open("rb") as fh:
            digests[relpath] = hashlib.file_digest(fh, "sha256").hexdigest()
    server = WeightportServer(tmp / "data").start()
    try:
        server.publish(source, MODEL, kind="CUSTOM_MODEL")
    except BaseException:
        server.stop()
        raise
    shutil.rmtree(source)  # one set of bytes on disk: the server's store
    return server, digests


def reference_samples(url: str, size: int, seed: int) -> list[tuple[int, bytes]]:
    """Reference windows of the served bytes: the start, the end and four random places."""
    rng = np.random.default_rng(seed)
    offsets = [0, size - SAMPLE, *map(int, rng.integers(0, size - SAMPLE, 4))]
    return [(offset, _range(url, offset, SAMPLE)) for offset in offsets]


def _range(url: str, offset: int, count: int) -> bytes:
    done = subprocess.run(
        ["curl", "-s", "-S", "-f", "-r", f"{offset}-{offset + count - 1}", url],
        capture_output=True,
        check=True,
    )
    return done.stdout


def parse_variant(text: str) -> tuple[str, list[str]]:
    match = _VARIANT.match(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r}: use CONNECTIONSxPART, e.g. 4x64M or 8xauto")
    return f"weightport {match[1]}×{match[2]}", ["--connections", match[1], "--part-size", match[2]]


def variant_arg(text: str) -> str:
    parse_variant(text)  # refuse a bad spelling before the slow setup
    return text


def _cli_startup() -> float:
    """Median seconds for ``weightport download model --help`` (interpreter + imports)."""
    times = []
    for _ in range(3):
        began = time.perf_counter()
        _run([*_weightport_cli(), "download", "model", "--help"])
        times.append(time.perf_counter() - began)
    return median(times)


#: The contender running the client of ``--baseline-src``.
BEFORE = "weightport before"


def run(
    quick: bool = False,
    reps: int | None = None,
    variants: Sequence[str] = (),
    baseline_src: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    file_size = 256 * MiB if quick else GiB
    reps = reps or (5 if quick else 3)
    parsed = [parse_variant(v) for v in variants]
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        server, digests = publish_model(tmp, file_size)
        try:
            urls = server.signed_urls(MODEL)
            samples = {
                rel: reference_samples(urls[rel], file_size, i)
                for i, rel in enumerate(sorted(urls))
            }
            model = Model(server, server.base_url, urls, digests, file_size, samples)
            bench = Bench(model, tmp)
            fetches = {
                "weightport": bench.contender("weightport", bench.weightport()),
                "curl": bench.contender("curl", bench.curl),
                "aria2c": bench.contender("aria2c", bench.aria2c),
                "hf_transfer": bench.contender("hf_transfer", bench.hf_transfer),
            }
            for label, extra in parsed:
                fetches[label] = bench.contender(label, bench.weightport(extra))
            if baseline_src is not None:
                fetches[BEFORE] = bench.contender(BEFORE, bench.weightport(src=baseline_src))
            bench.full_check = True  # warm-up: page cache, code paths, full sha256 of all
            for fetch in fetches.values():
                fetch()
            bench.full_check = False
            bench.client_cpu.clear()
            bench.client_user.clear()
            bench.sha_seconds.clear()
            bench.sha_cpu.clear()
            samples_by = interleaved(reps, {k: (server.pid, f) for k, f in fetches.items()})
            startup = _cli_startup()
        finally:
            server.stop()
    rows = _rows(samples_by, bench, startup, [label for label, _ in parsed])
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "files": FILES,
        "file_bytes": file_size,
        "reps": reps,
        "variants": list(variants),
        "baseline_src": None if baseline_src is None else str(baseline_src),
        "seconds": time.perf_counter() - started,
        "raw": {name: samples_json(s) for name, s in samples_by.items()},
        "client_cpu_s": bench.client_cpu,
        "client_user_s": bench.client_user,
        "sha256sum_seconds": bench.sha_seconds,
        "cli_startup_s": startup,
        "rows": rows_json(rows),
    }


def _rows(
    data: dict[str, list[Sample]], bench: Bench, startup: float, variants: list[str]
) -> list[Row]:
    wp, curl, hf = data["weightport"], data["curl"], data["hf_transfer"]
    verified_curl = [
        Sample(s.size, s.seconds + sha, s.cpu)
        for s, sha in zip(curl, bench.sha_seconds, strict=True)
    ]
    labels = {
        "weightport": "weightport (sha256 verified)",
        "curl": "curl, sequential (unverified)",
        "aria2c": "aria2c -x8 (unverified)",
        "hf_transfer": "hf_transfer (unverified)",
    }
    rows = [
        Row(NAME, labels[name], median([x.gbps for x in data[name]]), "GB/s") for name in labels
    ]
    rows.append(
        Row(NAME, "curl + sha256sum (verified)", median([x.gbps for x in verified_curl]), "GB/s")
    )
    vs_hf, vs_curl = paired_ratio(wp, hf), paired_ratio(wp, curl)
    hf_goal, curl_goal = f"≥ {TARGET_VS_HF}", f"≥ {TARGET_VS_CURL}"
    rows += [
        Row(NAME, "weightport ÷ hf_transfer", vs_hf, "×", hf_goal, vs_hf >= TARGET_VS_HF),
        Row(NAME, "weightport ÷ curl", vs_curl, "×", curl_goal, vs_curl >= TARGET_VS_CURL),
        Row(NAME, "weightport ÷ curl + sha256sum", paired_ratio(wp, verified_curl), "×"),
        Row(NAME, "weightport ÷ aria2c", paired_ratio(wp, data["aria2c"]), "×"),
    ]
    for label in [*variants, *([BEFORE] if BEFORE in data else [])]:
        rows.append(Row(NAME, label, median([x.gbps for x in data[label]]), "GB/s"))
        rows.append(Row(NAME, f"{label} ÷ curl", paired_ratio(data[label], curl), "×"))
    if BEFORE in data:
        rows.append(Row(NAME, f"weightport ÷ {BEFORE}", paired_ratio(wp, data[BEFORE]), "×"))
    total = wp[0].size / GB
    for name, cpu in bench.client_cpu.items():
        rows.append(Row(NAME, f"client CPU: {name}", sum(cpu) / len(cpu) / total, "core-s/GB"))
    for name, user in bench.client_user.items():
        rows.append(Row(NAME, f"… of it user: {name}", sum(user) / len(user) / total, "core-s/GB"))
    rows.append(
        Row(NAME, "sha256sum alone", median([total / s for s in bench.sha_seconds]), "GB/s")
    )
    rows.append(Row(NAME, "weightport CLI start-up (--help)", startup, "s"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.downloader", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 × 256 MiB instead of 4 × 1 GiB")
    parser.add_argument("--reps", type=int, default=None, help="rounds (default 3; 5 with --quick)")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="CONNxPART",
        type=variant_arg,
        help="also run weightport with --connections CONN --part-size PART (e.g. 4x64M)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a src/ folder of another weightport version, its client run in the same rounds",
    )
    args = parser.parse_args(argv)
    payload = run(args.quick, args.reps, args.variant, args.baseline_src)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
