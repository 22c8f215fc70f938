"""Run every benchmark and print one markdown table.

    .venv/bin/python -m bench.run_all [--quick] [--only NAME ...]

Each benchmark writes its own JSON to bench/results/; this writes a summary beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from bench import (
    archive_download,
    blob_vs_nginx,
    console_pages,
    downloader,
    downloader_link,
    hub_download,
    merge_stream,
    s3_download,
    slow_clients,
)
from bench.common import Row, machine_info, markdown_table, write_results

BENCHMARKS: dict[str, Callable[[bool], dict[str, Any]]] = {
    blob_vs_nginx.NAME: lambda quick: blob_vs_nginx.run(quick=quick),
    archive_download.NAME: lambda quick: archive_download.run(quick=quick),
    downloader.NAME: lambda quick: downloader.run(quick=quick),
    downloader_link.NAME: lambda quick: downloader_link.run(quick=quick),
    merge_stream.NAME: lambda quick: merge_stream.run(quick=quick),
    console_pages.NAME: lambda quick: console_pages.run(quick=quick),
    hub_download.NAME: lambda quick: hub_download.run(quick=quick),
    s3_download.NAME: lambda quick: s3_download.run(quick=quick),
    slow_clients.NAME: lambda quick: slow_clients.run(quick=quick),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen benchmarks; exit status 1 if any figure missed its target."""
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=None)
    args = parser.parse_args(argv)
    info = machine_info()
    rows: list[Row] = []
    payloads: dict[str, Any] = {}
    for name in args.only or list(BENCHMARKS):
        print(f"running {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr)
        payload = BENCHMARKS[name](args.quick)
        print(
            f"  {name}: {payload['seconds']:.0f} s -> {write_results(name, payload)}",
            file=sys.stderr,
        )
        payloads[name] = payload
        rows += [Row(**row) for row in payload["rows"]]
    summary = {
        "machine": info,
        "loadavg_at_end": list(os.getloadavg()),
        "quick": args.quick,
        "seconds": {name: p["seconds"] for name, p in payloads.items()},
        "rows": [row.__dict__ for row in rows],
    }
    path = write_results("summary", summary)
    print(markdown_table(rows))
    load = ", ".join(f"{x:.1f}" for x in info["loadavg_at_start"])
    print(f"\n{info['date']}, {info['cpus']} CPUs, load average at start {load}; JSON: {path}")
    return 1 if any(row.ok is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
