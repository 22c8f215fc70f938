"""An open-loop HTTP load generator: requests start at a fixed rate, whatever the server does.

    python -m bench.loadgen URL --rate 200 --seconds 20 [--header 'Name: value' ...]

Request *i* is due at ``start + i / rate``; its latency is measured from that due time to the
last byte of the answer, so a server that falls behind is charged for the queue it builds
(no coordinated omission, unlike closed-loop tools such as ``wrk``). Runs as its own process so
its CPU is not the server's; prints one JSON object: latencies (seconds, sorted), errors, and
how late the generator itself started requests (if that is large, the client was the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Sequence

import aiohttp


async def _one(
    session: aiohttp.ClientSession, url: str, due: float, out: list[float], errors: list[str]
) -> None:
    try:
        async with session.get(url) as response:
            await response.read()
            if response.status != 200:
                errors.append(f"HTTP {response.status}")
                return
    except (aiohttp.ClientError, OSError) as exc:
        errors.append(type(exc).__name__)
        return
    out.append(time.monotonic() - due)


async def run(url: str, rate: float, seconds: float, headers: dict[str, str]) -> dict[str, object]:
    """Fire ``rate`` GETs per second at ``url`` for ``seconds``; the latencies and errors."""
    latencies: list[float] = []
    errors: list[str] = []
    lateness: list[float] = []
    connector = aiohttp.TCPConnector(limit=256, force_close=False)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # Warm the connection pool and the server before the clock starts.
        await asyncio.gather(*(_one(session, url, time.monotonic(), [], []) for _ in range(8)))
        count = int(rate * seconds)
        start = time.monotonic() + 0.1
        tasks = []
        for i in range(count):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            lateness.append(time.monotonic() - due)
            tasks.append(asyncio.create_task(_one(session, url, due, latencies, errors)))
        await asyncio.gather(*tasks)
    lateness.sort()
    return {
        "latencies": sorted(latencies),
        "errors": errors,
        "requests": count,
        "generator_lateness_p99": lateness[int(0.99 * (len(lateness) - 1))] if lateness else 0.0,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--header", action="append", default=[], help="'Name: value'")
    args = parser.parse_args(argv)
    headers = dict(h.split(": ", 1) for h in args.header)
    result = asyncio.run(run(args.url, args.rate, args.seconds, headers))
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
