"""``getDownloadEndpoint`` of a 200-file model and model get/list as the catalog grows, on
SQLite and on PostgreSQL (issue #9).

    .venv/bin/python -m bench.download_endpoint [--quick] [--engines sqlite postgresql]
        [--baseline-src DIR]

For each engine, against real ``weightport serve`` processes on 127.0.0.1:

1. **Server time** of one ``getDownloadEndpoint`` (200 signed URLs): the server's CPU seconds
   (from /proc, all threads) over a sequential run of requests, divided by their number. Its
   reference, measured in the same rounds: ``GET /healthz``, the server's fixed cost of one
   request. Target: ≤ 2 ms. With ``--baseline-src``, a second server running another source
   tree (an earlier checkout's ``src``) on a catalog of its own is measured in the same rounds.
2. **Latency under load**: ``serve --workers 2`` and an open-loop generator in its own process
   (:mod:`bench.loadgen`) firing 200 requests/s; p50 and p99 from each request's due time.
   Reference: the same rate against ``/healthz``. Target: p99 < 20 ms.
3. **A big catalog**: model get and list (first page of 50) server time with the account's
   catalog holding one model, then 10⁵ (bulk-inserted: the routes only read the catalog).
   Target: within 1.5× of the small catalog.

The 200 files are catalog rows only (no blobs): the route signs URLs and reads nothing else.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import urllib3
from sqlalchemy import insert, select
from sqlalchemy.orm import Session
from tests.pg_cluster import PostgresCluster

from bench.common import Row, cpu_seconds, machine_info, markdown_table, median, write_results
from bench.common import scratch_dir as scratch
from bench.servers import WeightportServer
from weightport.catalog import accounts, registry, uploads
from weightport.catalog.db import Catalog
from weightport.catalog.schema import Model, ModelFile

NAME = "download_endpoint"
FILES = 200
BIG_CATALOG = 100_000
TARGET_SERVER_MS = 2.0
TARGET_P99_MS = 20.0
TARGET_GROWTH = 1.5
RATE = 200
_HTTP = urllib3.PoolManager(maxsize=1, retries=False, timeout=urllib3.Timeout(30))


def seed_model(catalog: Catalog, model_id: str, files: int) -> None:
    """A READY model of ``files`` files in the admin account (catalog rows only)."""

    def run(session: Session) -> None:
        registry.create_model(session, "admin", model_id, {"kind": "HF_BASE_MODEL"})
        sizes = {f"model-{i:05d}-of-{files:05d}.safetensors": 4 << 30 for i in range(files)}
        for f in uploads.declare_files(session, "admin", model_id, sizes):
            digest = hashlib.sha256(f.path.encode()).hexdigest()
            uploads.land_file(
                session, "admin", model_id, f.path, f.generation, digest, f.declared_size
            )
        uploads.mark_ready(session, "admin", model_id)

    catalog.call(run)


def seed_many(catalog: Catalog, count: int, account: str) -> None:
    """``count`` more READY models of two files each in ``account``, bulk-inserted."""
    catalog.call(lambda s: accounts.ensure_account(s, account))
    batch = 10_000
    for start in range(0, count, batch):
        rows = [
            {
                "account_id": account,
                "model_id": f"bulk-{i:06d}",
                "display_name": f"Bulk {i}",
                "description": "",
                "kind": "HF_BASE_MODEL",
                "state": registry.READY,
                "extra": {},
            }
            for i in range(start, min(start + batch, count))
        ]

        def bulk(session: Session, rows: list[dict[str, Any]] = rows) -> None:
            session.execute(insert(Model), rows)
            names = [row["model_id"] for row in rows]
            pks = session.scalars(
                select(Model.pk).where(Model.account_id == account, Model.model_id.in_(names))
            ).all()
            files = [
                {
                    "model_pk": pk,
                    "path": path,
                    "declared_size": size,
                    "sha256": f"{pk:064x}",
                    "generation": 1,
                }
                for pk in pks
                for path, size in (("config.json", 700), ("model.safetensors", 4 << 30))
            ]
            session.execute(insert(ModelFile), files)

        catalog.call(bulk)


def server_ms(server: WeightportServer, url: str, requests: int) -> float:
    """The server's CPU milliseconds per request over ``requests`` sequential GETs of ``url``."""
    headers = server.auth()
    before = cpu_seconds(server.pid)
    for _ in range(requests):
        response = _HTTP.request("GET", url, headers=headers)
        if response.status != 200:
            raise RuntimeError(f"GET {url}: {response.status} {response.data[:200]!r}")
    return (cpu_seconds(server.pid) - before) / requests * 1000


def rounds(reps: int, measures: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """``reps`` rounds of every measure, the order rotating per round (drift hits all alike)."""
    names = list(measures)
    out: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            out[name].append(measures[name]())
    return out


def load(server: WeightportServer, url: str, seconds: float) -> dict[str, Any]:
    """The open-loop generator's result for ``RATE`` requests/s of ``url`` for ``seconds``."""
    args = [sys.executable, "-m", "bench.loadgen", url, "--rate", str(RATE)]
    args += ["--seconds", str(seconds), "--header", f"Authorization: Bearer {server.admin_key}"]
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    latencies = result.pop("latencies")
    result["p50_ms"] = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    result["p99_ms"] = latencies[int(0.99 * (len(latencies) - 1))] * 1000 if latencies else 0.0
    result["max_ms"] = latencies[-1] * 1000 if latencies else float("nan")
    result["error_count"] = len(result.pop("errors"))
    return result


@contextmanager
def databases(engine: str) -> Iterator[Callable[[], str]]:
    """Empty catalogs of ``engine``, as many as asked for: a function that gives each one's
    URL (empty: SQLite in the server's data directory)."""
    if engine == "sqlite":
        yield lambda: ""
        return
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster.create_database
    finally:
        cluster.stop()


def serve_model(
    data: Path, url: str, source: Path | None = None
) -> tuple[WeightportServer, Catalog, dict[str, str]]:
    """A server on ``data`` (and catalog ``url``) with the 200-file model seeded, running
    the source tree ``source`` (this one if ``None``); its catalog and environment."""
    env = {"WEIGHTPORT_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(32)}"}
    if url:
        env["WEIGHTPORT_DATABASE_URL"] = url
    if source is not None:
        env["PYTHONPATH"] = str(source)
    server = WeightportServer(data, env=env).start()
    catalog = Catalog.open(url or f"sqlite:///{data / 'catalog.sqlite3'}", upgrade=False)
    seed_model(catalog, "m200", FILES)
    return server, catalog, env


def measure_engine(
    engine: str, quick: bool, reps: int, baseline_src: Path | None = None
) -> tuple[list[Row], dict[str, Any]]:
    label = "SQLite" if engine == "sqlite" else "PostgreSQL"
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    with scratch(f"endpoint-{engine}") as root, databases(engine) as new_database:
        data = root / "data"
        server, catalog, env = serve_model(data, new_database())
        before: WeightportServer | None = None
        try:
            base = f"{server.base_url}/v1/accounts/admin/models"
            endpoint = f"{base}/m200:getDownloadEndpoint"
            # /proc counts CPU in 10 ms ticks: 200 listings take ~300 ms of it.
            count = 200 if quick else 400
            measures = {
                "endpoint": lambda: server_ms(server, endpoint, count),
                "healthz": lambda: server_ms(server, f"{server.base_url}/healthz", count),
            }
            if baseline_src is not None:
                before, before_catalog, _ = serve_model(
                    root / "before", new_database(), baseline_src
                )
                before_catalog.close()
                old_server = before
                old = f"{before.base_url}/v1/accounts/admin/models/m200:getDownloadEndpoint"
                measures["before"] = lambda: server_ms(old_server, old, count)
            for measure in measures.values():
                measure()  # warm up
            timed = rounds(reps, measures)
            raw["server_ms"] = timed
            ms = median(timed["endpoint"])
            rows.append(
                Row(
                    NAME,
                    f"{label}: getDownloadEndpoint, 200 files, server CPU",
                    ms,
                    "ms",
                    f"≤ {TARGET_SERVER_MS:g} ms",
                    ms <= TARGET_SERVER_MS,
                )
            )
            rows.append(
                Row(
                    NAME,
                    f"{label}: /healthz (reference), server CPU",
                    median(timed["healthz"]),
                    "ms",
                )
            )
            if "before" in timed:
                was = median(timed["before"])
                rows.append(Row(NAME, f"{label}: getDownloadEndpoint, --baseline-src", was, "ms"))
                ratios = [a / b for a, b in zip(timed["endpoint"], timed["before"], strict=True)]
                rows.append(
                    Row(NAME, f"{label}: getDownloadEndpoint ÷ baseline", median(ratios), "×")
                )
            # Catalog growth: the account's get and list (it holds one model) with an
            # otherwise empty catalog, then with 10^5 models in other accounts.
            get_url, list_url = f"{base}/m200", f"{base}?pageSize=50"
            many = 2_000 if quick else BIG_CATALOG

            def get_and_list() -> dict[str, list[float]]:
                return rounds(
                    reps,
                    {
                        "get": lambda: server_ms(server, get_url, count),
                        "list": lambda: server_ms(server, list_url, count),
                    },
                )

            small = get_and_list()
            for i in range(10):
                seed_many(catalog, many // 10, f"tenant-{i}")
            big = get_and_list()
            # The same 10^5 models in this very account: list counts them (totalSize).
            seed_many(catalog, many, "admin")
            crowded = get_and_list()
            raw["catalog"] = {"small": small, "big": big, "same_account": crowded}
            for what in ("get", "list"):
                ratio = median(big[what]) / median(small[what])
                rows.append(
                    Row(
                        NAME,
                        f"{label}: model {what}, 10⁵ models in the catalog / none",
                        ratio,
                        "×",
                        f"≤ {TARGET_GROWTH:g}×",
                        ratio <= TARGET_GROWTH,
                    )
                )
                ratio = median(crowded[what]) / median(small[what])
                rows.append(
                    Row(
                        NAME,
                        f"{label}: model {what}, 10⁵ models in the same account / none",
                        ratio,
                        "×",
                    )
                )
        finally:
            server.stop()
            catalog.close()
            if before is not None:
                before.stop()
        # Load with two workers, on the big catalog.
        env["WEIGHTPORT_WORKERS"] = "2"
        server = WeightportServer(data, env=env, admin_key=server.admin_key).start()
        try:
            seconds = 5 if quick else 20
            endpoint = f"{server.base_url}/v1/accounts/admin/models/m200:getDownloadEndpoint"
            loaded = load(server, endpoint, seconds)
            reference = load(server, f"{server.base_url}/healthz", seconds)
            raw["load"] = {"endpoint": loaded, "healthz": reference}
            ok = loaded["p99_ms"] < TARGET_P99_MS and loaded["error_count"] == 0
            rows.append(
                Row(
                    NAME,
                    f"{label}: 200 req/s, --workers 2, p99",
                    loaded["p99_ms"],
                    "ms",
                    f"< {TARGET_P99_MS:g} ms",
                    ok,
                )
            )
            rows.append(Row(NAME, f"{label}: 200 req/s, --workers 2, p50", loaded["p50_ms"], "ms"))
            rows.append(
                Row(
                    NAME,
                    f"{label}: 200 req/s of /healthz (reference), p99",
                    reference["p99_ms"],
                    "ms",
                )
            )
        finally:
            server.stop()
    return rows, raw


def run(
    quick: bool = False,
    reps: int = 5,
    engines: Sequence[str] = ("sqlite", "postgresql"),
    baseline_src: Path | None = None,
) -> dict[str, Any]:
    info = machine_info()
    started = time.monotonic()
    rows: list[Row] = []
    raw: dict[str, Any] = {}
    for engine in engines:
        engine_rows, raw[engine] = measure_engine(engine, quick, reps, baseline_src)
        rows += engine_rows
    return {
        "machine": info,
        "baseline_src": None if baseline_src is None else str(baseline_src),
        "seconds": time.monotonic() - started,
        "rows": [row.__dict__ for row in rows],
        "raw": raw,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.download_endpoint", description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="also measure a server running this source tree (e.g. an earlier checkout's src)",
    )
    args = parser.parse_args(argv)
    payload = run(args.quick, args.reps, args.engines, args.baseline_src)
    path = write_results(NAME, payload)
    rows = [Row(**row) for row in payload["rows"]]
    print(markdown_table(rows))
    print(f"\nJSON: {path}")
    return 1 if any(row.ok is False for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
