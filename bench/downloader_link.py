"""Issue #13: the downloaders on a long, per-connection-limited link, not on loopback.

The same model as ``bench.downloader`` (four random files published as ``admin/bench`` on a
real ``weightport serve``) is fetched through :mod:`bench.link_emulator`, a proxy on
127.0.0.1 that adds a round-trip time (default 40 ms, the handshake included) and caps every
connection at a rate (default 25 MB/s), as a long internet path or a CDN's per-connection
limit does. Everyone fetches through the emulator: weightport lists the model through it (so
its signed URLs point at it too), the others get the same signed URLs rewritten to it.

The contenders and their checks are ``bench.downloader``'s: weightport verifies sha256 as
part of its time; curl is sequential and single-stream, followed by ``sha256sum`` (timed
apart, for the verified figure); ``aria2c -x8 -s8`` runs the four files at once; hf_transfer
fetches the files in turn with ``max_files=8``. Outputs are checked outside the timing
(sizes and sampled windows every round, full sha256 in the warm-up round).

The emulator must never be what limits the figures, so it runs as its own process and its
CPU is read per fetch (core-seconds per GB through it). In the same interleaved rounds the
parallel contenders (weightport with the 32 connections it picks on the link, aria2c) also
run through a second, *unthrottled* emulator (no delay, no cap) and straight to the server:
the first is the proxy's ceiling, which has to stay above every throttled figure, and the
second shows what the proxy itself costs.

``--variant`` and ``--baseline-src`` add contenders to the same rounds, as in ``bench.downloader``.

    .venv/bin/python -m bench.downloader_link [--quick] [--reps N] [--rtt-ms 40] [--rate 25M]
        [--variant CONNxPART ...] [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import (
    GB,
    Contender,
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
    write_results,
)
from bench.downloader import (
    BEFORE,
    MODEL,
    Bench,
    Model,
    parse_variant,
    publish_model,
    reference_samples,
    variant_arg,
)
from bench.link_emulator import LinkEmulator, LinkProfile, check_profile, parse_rate
from weightport.client.options import FAR_CONNECTIONS

NAME = "downloader_link"
#: weightport ÷ contender, each as the issue sets it.
TARGETS = {"curl": 3.0, "hf_transfer": 1.2, "aria2c": 1.0}
LABELS = {
    "weightport": "weightport (sha256 verified)",
    "curl": "curl, sequential (unverified)",
    "aria2c": "aria2c -x8 -s8 (unverified)",
    "hf_transfer": "hf_transfer, max_files=8 (unverified)",
}
#: Contenders run again through the unthrottled emulator and directly (its ceiling).
CEILING = {"weightport": ["--connections", str(FAR_CONNECTIONS)], "aria2c": []}


def _through(model: Model, link: LinkEmulator) -> Model:
    """``model`` as seen through ``link``: its base URL and signed URLs point at the proxy."""
    port = model.server.port
    urls = {rel: link.rewrite(url, port) for rel, url in model.urls.items()}
    return replace(model, base_url=link.base_url, urls=urls)


def _fetches(
    bench: Bench, variants: Sequence[str], baseline_src: Path | None
) -> dict[str, Callable[[], tuple[int, float]]]:
    methods: dict[str, Callable[[Any], float]] = {
        "weightport": bench.weightport(),
        "curl": bench.curl,
        "aria2c": bench.aria2c,
        "hf_transfer": bench.hf_transfer,
    }
    fetches = {name: bench.contender(name, methods[name]) for name in LABELS}
    for text in variants:
        label, extra = parse_variant(text)
        fetches[label] = bench.contender(label, bench.weightport(extra))
    if baseline_src is not None:
        fetches[BEFORE] = bench.contender(BEFORE, bench.weightport(src=baseline_src))
    return fetches


def _ceiling_fetches(bench: Bench, where: str) -> dict[str, Callable[[], tuple[int, float]]]:
    fetches = {}
    for name, extra in CEILING.items():
        fetch = bench.weightport(extra) if name == "weightport" else bench.aria2c
        fetches[f"{name} {where}"] = bench.contender(f"{name} {where}", fetch)
    return fetches


def run(
    quick: bool = False,
    reps: int | None = None,
    profile: LinkProfile | None = None,
    variants: Sequence[str] = (),
    baseline_src: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    profile = profile or LinkProfile(rtt=0.040, rate=25e6)
    check_profile(profile)
    file_size = (64 if quick else 256) * MiB
    reps = reps or 3
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        server, digests = publish_model(tmp, file_size)
        try:
            signed = server.signed_urls(MODEL)
            samples = {
                rel: reference_samples(signed[rel], file_size, i)
                for i, rel in enumerate(sorted(signed))
            }
            model = Model(server, server.base_url, signed, digests, file_size, samples)
            log = tmp / "emulator.log"
            open_path = LinkProfile(rtt=0.0, rate=0.0)
            with (
                LinkEmulator(server.port, profile, log) as link,
                LinkEmulator(server.port, open_path, log) as unthrottled,
            ):
                bench = Bench(_through(model, link), tmp)
                fetches = _fetches(bench, variants, baseline_src)
                bench.full_check = True  # warm-up: page cache, code paths, full sha256 of all
                for fetch in fetches.values():
                    fetch()
                bench.full_check = False
                bench.client_cpu.clear()
                bench.sha_seconds.clear()
                bench.sha_cpu.clear()
                # The ceiling runs in the same rounds, so that drifting load hits both alike.
                through = _ceiling_fetches(Bench(_through(model, unthrottled), tmp), "via proxy")
                direct = _ceiling_fetches(Bench(model, tmp), "direct")
                contenders: dict[str, Contender] = {k: (link.pid, f) for k, f in fetches.items()}
                contenders.update({k: (unthrottled.pid, f) for k, f in through.items()})
                contenders.update({k: (None, f) for k, f in direct.items()})
                measured = interleaved(reps, contenders)
            linked = {k: v for k, v in measured.items() if k in fetches}
            ceiling = {k: v for k, v in measured.items() if k not in fetches}
        finally:
            server.stop()
    rows = _rows(linked, ceiling, bench, profile)
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "link": {"rtt_s": profile.rtt, "rate_bytes_per_s": profile.rate},
        "quick": quick,
        "file_bytes": file_size,
        "reps": reps,
        "variants": list(variants),
        "baseline_src": None if baseline_src is None else str(baseline_src),
        "seconds": time.perf_counter() - started,
        "raw": {name: samples_json(s) for name, s in linked.items()},
        "raw_unthrottled": {name: samples_json(s) for name, s in ceiling.items()},
        "client_cpu_s": bench.client_cpu,
        "sha256sum_seconds": bench.sha_seconds,
        "rows": rows_json(rows),
    }


def _mbps(samples: Sequence[Sample]) -> float:
    return median([s.gbps * 1000 for s in samples])


def _proxy_cpu(samples: Sequence[Sample]) -> float:
    return sum(s.cpu for s in samples) / (sum(s.size for s in samples) / GB)


def _rows(
    linked: dict[str, list[Sample]],
    ceiling: dict[str, list[Sample]],
    bench: Bench,
    profile: LinkProfile,
) -> list[Row]:
    link = f"{profile.describe()}"
    rows = [Row(NAME, f"{label} — {link}", _mbps(linked[n]), "MB/s") for n, label in LABELS.items()]
    curl = linked["curl"]
    verified_curl = [
        Sample(s.size, s.seconds + sha, s.cpu)
        for s, sha in zip(curl, bench.sha_seconds, strict=True)
    ]
    rows.append(Row(NAME, "curl + sha256sum (verified)", _mbps(verified_curl), "MB/s"))
    wp = linked["weightport"]
    for name, target in TARGETS.items():
        ratio = paired_ratio(wp, linked[name])
        rows.append(Row(NAME, f"weightport ÷ {name}", ratio, "×", f"≥ {target}", ratio >= target))
    rows.append(Row(NAME, "weightport ÷ curl + sha256sum", paired_ratio(wp, verified_curl), "×"))
    for label in linked:
        if label not in LABELS:
            rows.append(Row(NAME, label, _mbps(linked[label]), "MB/s"))
            rows.append(
                Row(NAME, f"{label} ÷ aria2c", paired_ratio(linked[label], linked["aria2c"]), "×")
            )
    total = wp[0].size / GB
    for name, cpu in bench.client_cpu.items():
        rows.append(Row(NAME, f"client CPU: {name}", sum(cpu) / len(cpu) / total, "core-s/GB"))
    for name, samples in linked.items():
        rows.append(Row(NAME, f"emulator CPU: {name}", _proxy_cpu(samples), "core-s/GB"))
    fastest = max(_mbps(s) for s in linked.values())
    for name, samples in ceiling.items():
        rows.append(Row(NAME, f"no delay, no cap: {name}", _mbps(samples), "MB/s"))
        if name.endswith("via proxy"):
            rows.append(Row(NAME, f"emulator CPU: {name}", _proxy_cpu(samples), "core-s/GB"))
    for name in CEILING:
        cost = paired_ratio(ceiling[f"{name} via proxy"], ceiling[f"{name} direct"])
        rows.append(Row(NAME, f"{name}: unthrottled proxy ÷ direct", cost, "×"))
    proxied = [s for name, s in ceiling.items() if name.endswith("via proxy")]
    headroom = max(_mbps(s) for s in proxied) / fastest
    ok = headroom > 1
    rows.append(Row(NAME, "emulator ceiling ÷ fastest throttled", headroom, "×", "> 1", ok))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.downloader_link", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 × 64 MiB instead of 4 × 256 MiB")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time to add")
    parser.add_argument("--rate", type=parse_rate, default=25e6, help="per connection, e.g. 25M")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="CONNxPART",
        type=variant_arg,
        help="also run weightport with --connections CONN --part-size PART (e.g. 32x16M)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="a src/ folder of another weightport version, its client run in the same rounds",
    )
    args = parser.parse_args(argv)
    profile = LinkProfile(rtt=args.rtt_ms / 1000, rate=args.rate)
    payload = run(args.quick, args.reps, profile, args.variant, args.baseline_src)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
