"""Clients that stop (issue #8): memory and connections they hold, and how fast they go.

    .venv/bin/python -m bench.slow_clients [--quick] [--clients N] [--loris N]

One server (stored archives, ``send_timeout`` = ``header_timeout`` = 5 s, no download cap)
with a LoRA fine-tune whose merged archive is ~80 MB, computed on the fly:

1. **stalled**: N clients request the merged archive and never read. Server RSS before, at
   its peak, and 30 s after every client was dropped (and how soon it was back within the
   target); how long after the last request the last client was dropped (a client is only
   counted idle once its response has started: with N requests at once, the merge queue
   decides when that is).
2. **left**: N clients request it and close their sockets after 2 s, before the send
   timeout: RSS 30 s after they left.
3. **slowloris**: N connections trickle a request head one header line every 0.5 s; how long
   each stays open; meanwhile the median time of a normal API request, against the same
   request on the idle server (the ratio).

RSS figures are ratios to the baseline of the same run (a server that has already served
the archive once and returned its memory).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import urllib3

from bench.common import (
    Row,
    machine_info,
    markdown_table,
    median,
    rows_json,
    rss_mib,
    scratch_dir,
    write_results,
)
from bench.merge_stream import Shape, make_adapter, make_base
from bench.servers import WeightportServer

NAME = "slow_clients"
TIMEOUT_S = 5
SHAPE = Shape(hidden=1024, intermediate=2816, layers=2, vocab=8000)
#: Targets: RSS back within 1.25× of its baseline once clients are gone; requests during
#: slowloris within 3× of their idle time.
RSS_TARGET = 1.25
LORIS_LATENCY_TARGET = 3.0
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))


def _sockets(pid: int) -> int:
    count = 0
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            count += os.readlink(fd).startswith("socket:")
        except FileNotFoundError:
            continue
    return count


def _wait(condition: Any, guard_s: float = 120.0) -> float:
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > guard_s:
            raise RuntimeError("gave up waiting")
        time.sleep(0.05)
    return time.monotonic() - began


def _request(url: str, auth: dict[str, str]) -> bytes:
    parts = urlsplit(url)
    lines = [f"GET {parts.path}?{parts.query} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in auth.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _stall(port: int, request: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(request)
    return sock


def _settled_rss(pid: int) -> float:
    time.sleep(10)  # memory is returned 5 s after computed downloads stop ending
    return rss_mib(pid)


def _return(pid: int, baseline: float, window_s: float = 30.0) -> tuple[float, float]:
    """RSS ``window_s`` after now, and how long it took to come within RSS_TARGET of
    ``baseline`` (inf if it never did)."""
    began = time.monotonic()
    within = float("inf")
    while time.monotonic() - began < window_s:
        if within == float("inf") and rss_mib(pid) <= baseline * RSS_TARGET:
            within = time.monotonic() - began
        time.sleep(0.25)
    return rss_mib(pid), within


def stalled(server: WeightportServer, url: str, clients: int) -> dict[str, float]:
    pid, idle = server.pid, _sockets(server.pid)
    baseline = _settled_rss(pid)
    request = _request(url, server.auth())
    socks = [_stall(server.port, request) for _ in range(clients)]
    sent = time.monotonic()
    peak = baseline

    def dropped() -> bool:
        nonlocal peak
        peak = max(peak, rss_mib(pid))
        return _sockets(pid) <= idle

    _wait(dropped)
    drop_s = time.monotonic() - sent
    after_drop = rss_mib(pid)
    for sock in socks:
        sock.close()
    settled, within_s = _return(pid, baseline)
    return {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "after_drop_mib": after_drop,
        "settled_mib": settled,
        "back_within_target_after_s": within_s,
        "last_dropped_after_s": drop_s,
    }


def left(server: WeightportServer, url: str, clients: int) -> dict[str, float]:
    pid = server.pid
    baseline = _settled_rss(pid)
    request = _request(url, server.auth())
    socks = [_stall(server.port, request) for _ in range(clients)]
    time.sleep(2)
    peak = rss_mib(pid)
    for sock in socks:
        sock.close()
    settled, within_s = _return(pid, baseline)
    return {
        "baseline_mib": baseline,
        "peak_mib": peak,
        "settled_mib": settled,
        "back_within_target_after_s": within_s,
    }


def _api_ms(server: WeightportServer, reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        began = time.perf_counter()
        response = _HTTP.request("GET", server.base_url + "/v3/whoami", headers=server.auth())
        assert response.status == 200
        times.append((time.perf_counter() - began) * 1000)
    return times


def slowloris(server: WeightportServer, connections: int, reps: int) -> dict[str, Any]:
    idle_ms = median(_api_ms(server, reps))
    opened: list[tuple[socket.socket, float]] = []
    for _ in range(connections):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(b"GET /v3/whoami HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        opened.append((sock, time.monotonic()))
    lifetimes: list[float] = []
    done = threading.Event()

    def trickle() -> None:
        alive = list(opened)
        while alive and time.monotonic() - opened[0][1] < 120:
            for item in list(alive):
                try:
                    item[0].sendall(b"X-Slow: 1\r\n")
                except OSError:
                    lifetimes.append(time.monotonic() - item[1])
                    alive.remove(item)
            time.sleep(0.5)
        done.set()

    thread = threading.Thread(target=trickle)
    thread.start()
    busy_ms = median(_api_ms(server, reps))
    done.wait()
    thread.join()
    for sock, _ in opened:
        sock.close()
    return {
        "connections": connections,
        "closed": len(lifetimes),
        "open_s_median": median(lifetimes) if lifetimes else float("inf"),
        "open_s_max": max(lifetimes) if lifetimes else float("inf"),
        "api_ms_idle": idle_ms,
        "api_ms_during": busy_ms,
    }


def run(
    quick: bool = False, clients: int | None = None, loris: int | None = None
) -> dict[str, Any]:
    clients = clients or (50 if quick else 200)
    loris = loris or (50 if quick else 300)
    began = time.monotonic()
    env = {
        "WEIGHTPORT_SEND_TIMEOUT": str(TIMEOUT_S),
        "WEIGHTPORT_HEADER_TIMEOUT": str(TIMEOUT_S),
        "WEIGHTPORT_MAX_COMPUTED_DOWNLOADS": "0",
        "WEIGHTPORT_ARCHIVE_ENCODING": "stored",
    }
    with scratch_dir(NAME) as tmp:
        make_base(tmp / "base", SHAPE)
        make_adapter(tmp / "adapter", SHAPE)
        server = WeightportServer(tmp / "data", env=env).start()
        try:
            server.publish(tmp / "base", "base")
            out = server.cli(
                "finetunes", "import", "--data-dir", str(server.data_dir),
                "--base-model", "base", "--final", f"1={tmp / 'adapter'}",
            )  # fmt: skip
            ft_id = out.strip().splitlines()[-1]
            url = f"{server.base_url}/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
            size = len(_HTTP.request("GET", url, headers=server.auth()).data)  # warm
            results = {
                "archive_bytes": size,
                "stalled": stalled(server, url, clients),
                "left": left(server, url, clients),
                "slowloris": slowloris(server, loris, 20),
            }
        finally:
            server.stop()
    rows = _rows(results, clients)
    return {
        "name": NAME,
        "machine": machine_info(),
        "clients": clients,
        "results": results,
        "rows": rows_json(rows),
        "seconds": time.monotonic() - began,
    }


def _rows(results: dict[str, Any], clients: int) -> list[Row]:
    st, lf, sl = results["stalled"], results["left"], results["slowloris"]
    return [
        Row(NAME, f"RSS at peak, {clients} stalled clients / baseline",
            st["peak_mib"] / st["baseline_mib"], "x"),
        Row(NAME, "all stalled clients dropped, after the last request", st["last_dropped_after_s"],
            "s"),
        Row(NAME, "RSS 30 s after the drops / baseline", st["settled_mib"] / st["baseline_mib"],
            "x", f"<= {RSS_TARGET}", st["settled_mib"] / st["baseline_mib"] <= RSS_TARGET),
        Row(NAME, f"  ... within {RSS_TARGET}x of baseline after", st["back_within_target_after_s"],
            "s"),
        Row(NAME, f"RSS at peak, {clients} clients that leave / baseline",
            lf["peak_mib"] / lf["baseline_mib"], "x"),
        Row(NAME, "RSS 30 s after they left / baseline", lf["settled_mib"] / lf["baseline_mib"],
            "x", f"<= {RSS_TARGET}", lf["settled_mib"] / lf["baseline_mib"] <= RSS_TARGET),
        Row(NAME, f"slowloris: {sl['closed']}/{sl['connections']} heads closed after (median)",
            sl["open_s_median"], "s", f"<= {TIMEOUT_S + 1} s",
            sl["closed"] == sl["connections"] and sl["open_s_median"] <= TIMEOUT_S + 1),
        Row(NAME, "API request during slowloris / idle (median time)",
            sl["api_ms_during"] / sl["api_ms_idle"], "x", f"<= {LORIS_LATENCY_TARGET}",
            sl["api_ms_during"] / sl["api_ms_idle"] <= LORIS_LATENCY_TARGET),
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.slow_clients", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 clients, 50 slowloris")
    parser.add_argument("--clients", type=int, default=None)
    parser.add_argument("--loris", type=int, default=None)
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, clients=args.clients, loris=args.loris)
    path = write_results(NAME, payload)
    print(markdown_table([Row(**row) for row in payload["rows"]]))
    print(json.dumps(payload["results"], indent=2), file=sys.stderr)
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
