"""Issue #9: Together downloads from an S3-backed server (SeaweedFS on this machine).

One synthetic bf16 Llama-shaped base model (``bench.merge_stream``'s data) is pushed to two
servers — one on an S3 store (SeaweedFS, started here on free ports), one on the local
store — and imported on each as a Full fine-tune (the same blobs) and as a LoRA fine-tune.
In interleaved rounds of one run, curl downloads:

1. the *stored* archive from the S3-backed server, against a direct presigned GET from
   SeaweedFS of exactly the same bytes (the archive put there as one object) — target ≥ 0.8×;
2. the *merged* archive from the S3-backed server, against the same merge from the local
   store — target ≥ 0.8×.

    .venv/bin/python -m bench.s3_download [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.seaweedfs import running_seaweedfs

from bench.common import (
    Row,
    Sample,
    curl_get,
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
from bench.merge_stream import FULL, QUICK, make_adapter, make_base
from bench.servers import WeightportServer

NAME = "s3_download"
TARGET = 0.8


def _import(server: WeightportServer, folder: Path, *extra: str) -> str:
    out = server.cli(
        "finetunes", "import", "--data-dir", str(server.data_dir),
        "--base-model", "base", "--final", f"1={folder}", *extra,
    )  # fmt: skip
    return out.strip().splitlines()[-1]


def _fetch(url: str, headers: dict[str, str]) -> Callable[[], tuple[int, float]]:
    def run() -> tuple[int, float]:
        transfer = curl_get(url, headers=headers)
        return transfer.size, transfer.seconds

    return run


def run(quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    """Measure; returns the JSON payload (rows, samples, machine info)."""
    started = time.monotonic()
    reps = reps or (3 if quick else 7)
    shape = QUICK if quick else FULL
    with scratch_dir(NAME) as tmp, running_seaweedfs(tmp / "weed") as weed:
        base, adapter = tmp / "base", tmp / "adapter"
        make_base(base, shape)
        make_adapter(adapter, shape)
        # The CLI runs beside each server with the same settings: through the environment.
        os.environ.update(weed.env())
        os.environ["WEIGHTPORT_ARCHIVE_ENCODING"] = "stored"
        s3_env = {
            "WEIGHTPORT_STORAGE_URL": f"s3://{weed.bucket}/bench",
            "WEIGHTPORT_S3_ENDPOINT": weed.endpoint,
        }
        servers = {
            "s3": WeightportServer(tmp / "s3", env=s3_env),
            "local": WeightportServer(tmp / "local"),
        }
        urls: dict[str, dict[str, str]] = {}
        try:
            for name, server in servers.items():
                saved = dict(os.environ)
                os.environ.update(server.env)
                try:
                    server.start()
                    server.publish(base, "base")
                    full = _import(server, base, "--full")
                    lora = _import(server, adapter)
                finally:
                    os.environ.clear()
                    os.environ.update(saved)
                download = f"{server.base_url}/v1/finetune/download?ft_id="
                urls[name] = {
                    "stored": f"{download}{full}&checkpoint=model_output_path",
                    "merged": f"{download}{lora}&checkpoint=merged",
                }
            s3, local = servers["s3"], servers["local"]
            # The stored archive's exact bytes as one object, for the direct presigned GET.
            archive = tmp / "archive.tar.zst"
            done = curl_get(urls["s3"]["stored"], headers=s3.auth())
            subprocess.run(
                ["curl", "-sSf", "-o", str(archive), "-H", f"Authorization: Bearer {s3.admin_key}",
                 urls["s3"]["stored"]],
                check=True,
            )  # fmt: skip
            client: Any = weed.client()
            client.upload_file(str(archive), weed.bucket, "direct/archive.tar.zst")
            direct = client.generate_presigned_url(
                "get_object",
                Params={"Bucket": weed.bucket, "Key": "direct/archive.tar.zst"},
                ExpiresIn=3600,
            )
            if archive.stat().st_size != done.size:
                raise RuntimeError("the archive changed between two downloads")
            s3_get = {kind: _fetch(url, s3.auth()) for kind, url in urls["s3"].items()}
            samples = interleaved(
                reps,
                {
                    "stored from S3-backed server": (s3.pid, s3_get["stored"]),
                    "direct presigned GET": (None, _fetch(direct, {})),
                    "merged from S3-backed server": (s3.pid, s3_get["merged"]),
                    "merged from local store": (
                        local.pid,
                        _fetch(urls["local"]["merged"], local.auth()),
                    ),
                },
            )
        finally:
            for server in servers.values():
                server.stop()
    rows = _rows(samples)
    return {
        "name": NAME,
        "seconds": time.monotonic() - started,
        "quick": quick,
        "reps": reps,
        "archive_bytes": done.size,
        "machine": machine_info(),
        "rows": rows_json(rows),
        "samples": {name: samples_json(s) for name, s in samples.items()},
    }


def _rows(samples: dict[str, list[Sample]]) -> list[Row]:
    stored = paired_ratio(samples["stored from S3-backed server"], samples["direct presigned GET"])
    merged = paired_ratio(
        samples["merged from S3-backed server"], samples["merged from local store"]
    )
    rows = [
        Row(NAME, f"{name} (median)", median([s.gbps for s in values]), "GB/s")
        for name, values in samples.items()
    ]
    rows.append(
        Row(NAME, "stored archive via S3 server / direct presigned GET", stored, "×",
            f"≥ {TARGET}", stored >= TARGET)
    )  # fmt: skip
    rows.append(
        Row(NAME, "merged from S3 / merged from local store", merged, "×",
            f"≥ {TARGET}", merged >= TARGET)
    )  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_download", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a smaller model, fewer rounds")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps)
    print(f"results: {write_results(NAME, payload)}", file=sys.stderr)
    print(markdown_table([Row(**row) for row in payload["rows"]]))


if __name__ == "__main__":
    main()
