"""Issue #2: the signed-URL file route against nginx serving the same bytes.

A random file is published as a model file (create → upload → validate) and fetched through
its signed URL; nginx (sendfile on, tcp_nopush on, no access log) serves a plain copy of the
same file. Repetitions alternate which server goes first, the page cache is warm, the client
is curl writing to /dev/null. Reported: throughput ratio (target ≥ 0.9× nginx) and server
CPU per GB for a whole-file GET and for 8 parallel Range requests covering the file.

    .venv/bin/python -m bench.blob_vs_nginx [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from collections.abc import Callable, Sequence
from typing import Any

from bench.common import (
    GiB,
    MiB,
    Row,
    Sample,
    cpu_per_gb,
    curl_get,
    first_bytes,
    interleaved,
    machine_info,
    markdown_table,
    median,
    paired_ratio,
    parallel_ranges,
    peak_rss_mib,
    reset_peak_rss,
    rows_json,
    samples_json,
    scratch_dir,
    warm_page_cache,
    write_random_file,
    write_results,
)
from bench.servers import Nginx, WeightportServer

NAME = "blob_vs_nginx"
TARGET_RATIO = 0.9
RANGE_PARTS = 8


def run(quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    """Run the benchmark; returns the JSON payload (rows + raw measurements)."""
    size = 256 * MiB if quick else GiB
    reps = reps or (5 if quick else 7)
    info = machine_info()
    started = time.perf_counter()
    with scratch_dir(NAME) as tmp:
        source = tmp / "model" / "weights.bin"
        write_random_file(source, size, seed=2)
        www = tmp / "www"
        www.mkdir(mode=0o755)
        shutil.copyfile(source, www / "weights.bin")
        (www / "weights.bin").chmod(0o644)
        server = WeightportServer(tmp / "data")
        nginx = Nginx(www, tmp / "nginx")
        try:
            server.start()
            nginx.start()
            server.publish(source.parent, "bench-blob", kind="CUSTOM_MODEL")
            wp_url = server.signed_urls("bench-blob")["weights.bin"]
            ng_url = nginx.url("weights.bin")
            if first_bytes(wp_url, MiB) != first_bytes(ng_url, MiB):
                raise RuntimeError("weightport and nginx serve different bytes")
            upload_rss = peak_rss_mib(server.pid)
            reset_peak_rss(server.pid)  # the download phase gets its own peak
            warm_page_cache(www / "weights.bin")
            for url in (wp_url, ng_url):  # warm-up: page cache, connections, code paths
                curl_get(url, expect_size=size)

            def whole(url: str) -> Callable[[], tuple[int, float]]:
                def fetch() -> tuple[int, float]:
                    transfer = curl_get(url, expect_size=size)
                    return transfer.size, transfer.seconds

                return fetch

            def ranges(url: str) -> Callable[[], tuple[int, float]]:
                return lambda: (size, parallel_ranges(url, size, RANGE_PARTS))

            results = {
                "GET whole file": interleaved(
                    reps,
                    {
                        "weightport": (server.pid, whole(wp_url)),
                        "nginx": (nginx.pid, whole(ng_url)),
                    },
                ),
                f"{RANGE_PARTS} parallel ranges": interleaved(
                    reps,
                    {
                        "weightport": (server.pid, ranges(wp_url)),
                        "nginx": (nginx.pid, ranges(ng_url)),
                    },
                ),
            }
            rss = peak_rss_mib(server.pid)
        finally:
            nginx.stop()
            server.stop()
    rows = _rows(results, rss, upload_rss)
    return {
        "benchmark": NAME,
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": quick,
        "file_bytes": size,
        "reps": reps,
        "range_parts": RANGE_PARTS,
        "seconds": time.perf_counter() - started,
        "raw": {
            label: {name: samples_json(samples) for name, samples in data.items()}
            for label, data in results.items()
        },
        "rows": rows_json(rows),
    }


def _rows(results: dict[str, dict[str, list[Sample]]], rss: float, upload_rss: float) -> list[Row]:
    rows: list[Row] = []
    for label, data in results.items():
        wp, ng = data["weightport"], data["nginx"]
        ratio = paired_ratio(wp, ng)
        ok = ratio >= TARGET_RATIO
        rows += [
            Row(NAME, f"{label}: weightport", median([x.gbps for x in wp]), "GB/s"),
            Row(NAME, f"{label}: nginx", median([x.gbps for x in ng]), "GB/s"),
            Row(NAME, f"{label}: weightport ÷ nginx", ratio, "×", f"≥ {TARGET_RATIO}", ok),
            Row(NAME, f"{label}: weightport CPU", cpu_per_gb(wp), "core-s/GB"),
            Row(NAME, f"{label}: nginx CPU", cpu_per_gb(ng), "core-s/GB"),
        ]
    rows.append(Row(NAME, "weightport peak RSS while serving", rss, "MiB"))
    rows.append(Row(NAME, "weightport peak RSS incl. the upload", upload_rss, "MiB"))
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.blob_vs_nginx", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256 MiB, 5 repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions per contender")
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**r) for r in payload["rows"]]))
    print(f"\n({payload['seconds']:.0f} s; results in {path})")


if __name__ == "__main__":
    main()
