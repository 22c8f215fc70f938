"""Shared machinery of the benchmarks: statistics, scratch data, process accounting, client.

Everything runs as real processes on 127.0.0.1 (servers: :mod:`bench.servers`), with
``curl`` as the client. Figures are compared as *ratios* against a reference measured
in the same run (absolute speeds depend on the machine and on what else it is doing).
GB means 10**9 bytes throughout; MiB/GiB are powers of two.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import urllib3

_REPO = Path(__file__).resolve().parent.parent

MiB = 1 << 20
GiB = 1 << 30
GB = 1e9
RESULTS_DIR = Path(__file__).resolve().parent / "results"
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))


# ---------------------------------------------------------------- results and statistics


@dataclass(frozen=True)
class Row:
    """One reported figure; ``ok`` is None when the figure has no target."""

    benchmark: str
    metric: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None

    def cells(self) -> list[str]:
        shown = f"{self.value:.3g}" if self.unit != "MiB" else f"{self.value:.0f}"
        verdict = {True: "met", False: "**missed**", None: ""}[self.ok]
        cells = [self.benchmark, self.metric, f"{shown} {self.unit}".strip(), self.target, verdict]
        return [cell.replace("|", "\\|") for cell in cells]  # a bare | splits the cell


def markdown_table(rows: Sequence[Row]) -> str:
    """The rows as a GitHub markdown table."""
    lines = ["| benchmark | metric | value | target | |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements (what the JSON keeps)."""
    return {"median": median(values), "min": min(values), "max": max(values), "n": len(values)}


@dataclass(frozen=True)
class Sample:
    """One timed fetch: bytes moved, seconds, and the serving process tree's CPU seconds."""

    size: int
    seconds: float
    cpu: float

    @property
    def gbps(self) -> float:
        return self.size / self.seconds / GB


#: A contender: the pid whose tree serves it (None: no server, CPU not counted) and a fetch
#: returning (bytes, seconds).
Contender = tuple[int | None, Callable[[], tuple[int, float]]]


def interleaved(reps: int, contenders: dict[str, Contender]) -> dict[str, list[Sample]]:
    """``reps`` rounds, each running every contender once, the order rotating per round.

    Interleaving spreads drift (other load, thermal state) over all contenders alike.
    """
    names = list(contenders)
    out: dict[str, list[Sample]] = {name: [] for name in names}
    for rep in range(reps):
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            pid, fetch = contenders[name]
            cpu_before = 0.0 if pid is None else cpu_seconds(pid)
            size, seconds = fetch()
            cpu = 0.0 if pid is None else cpu_seconds(pid) - cpu_before
            out[name].append(Sample(size, seconds, cpu))
    return out


def paired_ratio(mine: Sequence[Sample], reference: Sequence[Sample]) -> float:
    """Median over rounds of mine/reference throughput (robust to load that drifts)."""
    return median([a.gbps / b.gbps for a, b in zip(mine, reference, strict=True)])


def cpu_per_gb(samples: Sequence[Sample]) -> float:
    """Serving CPU core-seconds per GB, over all samples (clock ticks are 10 ms: sum first)."""
    return sum(s.cpu for s in samples) / (sum(s.size for s in samples) / GB)


def samples_json(samples: Sequence[Sample]) -> list[dict[str, float]]:
    return [asdict(s) for s in samples]


def machine_info() -> dict[str, Any]:
    """What the figures were measured on, including how busy the machine already was."""
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": list(os.getloadavg()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``bench/results/NAME-<utc time>.json`` (git-ignored) and return its path."""
    RESULTS_DIR.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def rows_json(rows: Sequence[Row]) -> list[dict[str, Any]]:
    return [asdict(row) for row in rows]


def python_child(code: str, args: Sequence[str], src: Path | None = None) -> dict[str, Any]:
    """Run ``python -c CODE ARGS`` from the repository (weightport imported from ``src`` if
    given: another version measured in the same run); returns its last line, parsed as JSON."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), str(_REPO)])
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=_REPO,
        env=env,
    )
    if done.returncode:
        raise RuntimeError(f"child process failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------- data on disk


@contextmanager
def scratch_dir(name: str) -> Iterator[Path]:
    """A temp directory under /tmp (never the repo), removed afterwards.

    Made world-readable because nginx workers started by root run as ``nobody``.
    """
    path = Path(tempfile.mkdtemp(prefix=f"wp-bench-{name}-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_random_file(path: Path, size: int, seed: int = 0) -> None:
    """``size`` incompressible bytes (seeded), written in 64 MiB pieces."""
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        left = size
        while left:
            piece = min(left, 64 * MiB)
            out.write(rng.bytes(piece))
            left -= piece


def warm_page_cache(*paths: Path) -> None:
    """Read files once so that the measured runs start from the page cache."""
    buf = bytearray(8 * MiB)
    for path in paths:
        with path.open("rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


# ---------------------------------------------------------------- process accounting


def _stat_tail(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces; everything after its ")" is fixed.
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (nginx master + workers, a server + any children)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_tail(int(entry.name))[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = [pid], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        tree += children
        frontier = children
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process tree (all threads) so far."""
    total = 0
    for member in process_tree(pid):
        try:
            tail = _stat_tail(member)
        except OSError:
            continue
        total += int(tail[11]) + int(tail[12])  # utime, stime (fields 14 and 15)
    return total / _CLK_TCK


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_mib(pid: int) -> float:
    """Peak resident set (VmHWM) of one process, MiB."""
    return _status_kib(pid, "VmHWM") / 1024


def rss_mib(pid: int) -> float:
    return _status_kib(pid, "VmRSS") / 1024


def reset_peak_rss(pid: int) -> bool:
    """Restart VmHWM from the current RSS (``clear_refs`` 5), so a phase has its own peak."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


# ---------------------------------------------------------------- the client


@dataclass(frozen=True)
class Transfer:
    """One curl download: HTTP status, bytes received, time to first byte, total time."""

    status: int
    size: int
    ttfb: float
    seconds: float

    @property
    def gbps(self) -> float:
        """Throughput in GB/s (10**9 bytes per second) over the whole request."""
        return self.size / self.seconds / GB


_CURL_FORMAT = "%{http_code} %{size_download} %{time_starttransfer} %{time_total}"


def _curl_args(url: str, headers: dict[str, str], byte_range: str | None) -> list[str]:
    args = ["curl", "-s", "-S", "-o", "/dev/null", "-w", _CURL_FORMAT]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    if byte_range is not None:
        args += ["-r", byte_range]
    return [*args, url]


def _parse_curl(output: str) -> Transfer:
    status, size, ttfb, total = output.split()
    return Transfer(int(status), int(size), float(ttfb), float(total))


def curl_get(
    url: str,
    *,
    headers: dict[str, str] | None = None,
    byte_range: str | None = None,
    expect_size: int | None = None,
) -> Transfer:
    """Download ``url`` to /dev/null with curl; checks the status and, if given, the size."""
    args = _curl_args(url, headers or {}, byte_range)
    done = subprocess.run(args, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"curl failed ({done.returncode}): {done.stderr}")
    transfer = _parse_curl(done.stdout)
    wanted = 200 if byte_range is None else 206
    if transfer.status != wanted or (expect_size is not None and transfer.size != expect_size):
        raise RuntimeError(f"unexpected answer from {url}: {transfer}")
    return transfer


def parallel_ranges(url: str, size: int, parts: int) -> float:
    """Fetch ``size`` bytes as ``parts`` concurrent Range requests (one curl each).

    Returns the wall time from the first launch until the last finishes.
    """
    step = -(-size // parts)
    ranges = [(start, min(start + step, size)) for start in range(0, size, step)]
    began = time.perf_counter()
    procs = [
        subprocess.Popen(
            _curl_args(url, {}, f"{start}-{end - 1}"), stdout=subprocess.PIPE, text=True
        )
        for start, end in ranges
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    elapsed = time.perf_counter() - began
    for (start, end), proc, output in zip(ranges, procs, outputs, strict=True):
        transfer = _parse_curl(output) if not proc.returncode else None
        if transfer is None or transfer.status != 206 or transfer.size != end - start:
            raise RuntimeError(f"range {start}-{end - 1} of {url} failed: {transfer}")
    return elapsed


def first_bytes(url: str, count: int, headers: dict[str, str] | None = None) -> bytes:
    """The first ``count`` bytes of ``url`` (to check that two servers serve the same file)."""
    response = _HTTP.request(
        "GET", url, headers={**(headers or {}), "Range": f"bytes=0-{count - 1}"}
    )
    if response.status != 206:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    return bytes(response.data)
