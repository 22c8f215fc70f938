"""The merge benchmark's server phases: merged and stored downloads of one base, in one run.

One ``weightport serve`` (stored encoding) holds the base model, a LoRA fine-tune of it (the
merged archive is computed per request) and a Full fine-tune whose checkpoint *is* the base
(its stored archive: the same bytes read from disk, no arithmetic). A second server started
from another source tree (``--baseline-src``, e.g. an export of the previous commit) serves the
same data, so "before" and "after" are measured in the same rounds. Phases:

1. **rounds**: every contender once per round, the order rotating (``interleaved``); the
   server's CPU per GB and its peak RSS;
2. **concurrent**: N merged downloads started together; their combined throughput, the
   slowest against the fastest (fair sharing), and the peak RSS;
3. **slow, then gone**: N rate-limited merged downloads (slow clients: the read-ahead must stay
   bounded while they lag), then killed mid-transfer; the server's RSS while they lag and
   after they are gone, against its RSS before they started.
"""

from __future__ import annotations

import hashlib
import io
import subprocess
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import zstandard

from bench.common import (
    Sample,
    curl_get,
    interleaved,
    peak_rss_mib,
    reset_peak_rss,
    rss_mib,
    samples_json,
)
from bench.servers import WeightportServer

#: Rate limit of the slow clients (curl ``--limit-rate``), bytes per second.
SLOW_RATE = 4 << 20
#: How long the slow clients lag before they are killed, and how long the server then has to
#: let go of their read-ahead (RSS polled until it stops falling).
SLOW_SECONDS = 3.0
SETTLE_SECONDS = 5.0


@dataclass
class Served:
    """One server and the URLs of the merged and the stored archive of the same base."""

    server: WeightportServer
    merged_url: str = ""
    stored_url: str = ""
    merged_size: int = 0
    stored_size: int = 0
    merged_sha256: str = ""

    def setup(self, base: Path, adapter: Path) -> None:
        """Start; push the base; import the adapter (LoRA) and the base (Full) as fine-tunes."""
        server = self.server
        server.start()
        server.publish(base, "base")
        lora = server.import_finetune("base", adapter)
        full = server.import_finetune("base", base, full=True)
        download = f"{server.base_url}/v1/finetune/download?ft_id="
        self.merged_url = f"{download}{lora}&checkpoint=merged"
        self.stored_url = f"{download}{full}&checkpoint=model_output_path"
        # Warm-up (plans, and the first merged download), hashing the merged files.
        self.merged_size, self.merged_sha256 = _member_digests(self.merged_url, server.auth())
        self.stored_size = curl_get(self.stored_url, headers=server.auth()).size

    def fetch(self, merged: bool) -> Callable[[], tuple[int, float]]:
        """A contender: one curl of the merged (or stored) archive, size checked."""
        url, size = (
            (self.merged_url, self.merged_size) if merged else (self.stored_url, self.stored_size)
        )

        def run() -> tuple[int, float]:
            transfer = curl_get(url, headers=self.server.auth(), expect_size=size)
            return transfer.size, transfer.seconds

        return run


class _Counted(io.RawIOBase):
    """A response body as a raw stream that counts the bytes read through it."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        data = self._response.read(len(buf))
        buf[: len(data)] = data
        self.count += len(data)
        return len(data)


def _member_digests(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """The archive's size, and one sha256 over its members' names and contents (the top
    folder's name is left out: it names the fine-tune, which differs between servers)."""
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300))
    response = http.request("GET", url, headers=headers, preload_content=False)
    if response.status != 200:
        raise RuntimeError(f"{url}: HTTP {response.status}")
    body = _Counted(response)
    digest = hashlib.sha256()
    reader = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(body, 1 << 20))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            source = tar.extractfile(member)
            if source is None:
                continue
            digest.update(member.name.split("/", 1)[-1].encode() + b"\0")
            while chunk := source.read(1 << 20):
                digest.update(chunk)
    response.release_conn()
    return body.count, digest.hexdigest()


@dataclass(frozen=True)
class Concurrent:
    """N downloads started together: wall time, each one's seconds, peak RSS."""

    count: int
    size: int
    wall: float
    each: tuple[float, ...]
    peak_rss_mib: float


def concurrent_merged(served: Served, count: int) -> Concurrent:
    """``count`` merged downloads at once (one curl each)."""
    server = served.server
    reset_peak_rss(server.pid)
    began = time.perf_counter()
    procs = [_curl(served.merged_url, server.auth()) for _ in range(count)]
    outputs = [proc.communicate()[0] for proc in procs]
    wall = time.perf_counter() - began
    each = []
    for proc, output in zip(procs, outputs, strict=True):
        status, size, _, seconds = output.split()
        if proc.returncode or int(status) != 200 or int(size) != served.merged_size:
            raise RuntimeError(f"concurrent download failed: {proc.returncode} {output}")
        each.append(float(seconds))
    return Concurrent(count, served.merged_size, wall, tuple(each), peak_rss_mib(server.pid))


def _curl(url: str, headers: dict[str, str], *extra: str) -> subprocess.Popen[str]:
    args = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} 0 %{time_total}"]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    return subprocess.Popen([*args, *extra, url], stdout=subprocess.PIPE, text=True)


@dataclass(frozen=True)
class SlowThenGone:
    """RSS (MiB) before N slow merged downloads, while they lag, and after they are killed."""

    count: int
    before: float
    lagging: float
    peak: float
    after: float
    settle_seconds: float


def slow_then_gone(served: Served, count: int) -> SlowThenGone:
    """``count`` rate-limited merged downloads, killed after :data:`SLOW_SECONDS`."""
    pid = served.server.pid
    before = rss_mib(pid)
    reset_peak_rss(pid)
    procs = [
        _curl(served.merged_url, served.server.auth(), "--limit-rate", str(SLOW_RATE))
        for _ in range(count)
    ]
    time.sleep(SLOW_SECONDS)
    lagging = rss_mib(pid)
    for proc in procs:
        proc.kill()
        proc.wait()
    gone = time.perf_counter()
    after = rss_mib(pid)
    while time.perf_counter() - gone < SETTLE_SECONDS:
        time.sleep(0.25)
        now = rss_mib(pid)
        if now >= after:  # stopped falling
            break
        after = now
    return SlowThenGone(
        count, before, lagging, peak_rss_mib(pid), after, time.perf_counter() - gone
    )


@dataclass
class ServerRun:
    """Everything the server phases measured, per server label ("after", "before")."""

    rounds: dict[str, list[Sample]] = field(default_factory=dict)
    idle_rss: dict[str, float] = field(default_factory=dict)
    rounds_peak_rss: dict[str, float] = field(default_factory=dict)
    push_peak_rss: dict[str, float] = field(default_factory=dict)
    concurrent: dict[str, Concurrent] = field(default_factory=dict)
    slow: dict[str, SlowThenGone] = field(default_factory=dict)
    merged_sha256: dict[str, str] = field(default_factory=dict)
    archive_bytes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "rounds": {k: samples_json(v) for k, v in self.rounds.items()},
            "idle_rss_mib": self.idle_rss,
            "rounds_peak_rss_mib": self.rounds_peak_rss,
            "push_peak_rss_mib": self.push_peak_rss,
            "concurrent": {k: asdict(v) for k, v in self.concurrent.items()},
            "slow_then_gone": {k: asdict(v) for k, v in self.slow.items()},
            "merged_sha256": self.merged_sha256,
            "archive_bytes": self.archive_bytes,
        }


def run_servers(
    tmp: Path,
    base: Path,
    adapter: Path,
    *,
    reps: int,
    concurrency: int,
    baseline_src: Path | None,
    peft: Callable[[], tuple[int, float]],
) -> ServerRun:
    """The three phases against the server from this tree (and the baseline's, if given).

    ``peft`` is one more contender of the rounds (no server: its CPU is not counted).
    """
    stored_env = {"WEIGHTPORT_ARCHIVE_ENCODING": "stored"}
    servers = {"after": Served(WeightportServer(tmp / "data", env=stored_env))}
    if baseline_src is not None:
        env = {**stored_env, "PYTHONPATH": str(baseline_src)}
        servers["before"] = Served(WeightportServer(tmp / "data-before", env=env))
    result = ServerRun()
    try:
        for label, served in servers.items():
            served.setup(base, adapter)
            pid = served.server.pid
            result.push_peak_rss[label] = peak_rss_mib(pid)
            result.idle_rss[label] = rss_mib(pid)
            result.merged_sha256[label] = served.merged_sha256
            result.archive_bytes[label] = served.merged_size
        contenders: dict[str, tuple[int | None, Callable[[], tuple[int, float]]]] = {}
        for label, served in servers.items():
            reset_peak_rss(served.server.pid)
            contenders[f"merged {label}"] = (served.server.pid, served.fetch(merged=True))
            contenders[f"stored {label}"] = (served.server.pid, served.fetch(merged=False))
        contenders["peft"] = (None, peft)
        result.rounds = interleaved(reps, contenders)
        for label, served in servers.items():
            result.rounds_peak_rss[label] = peak_rss_mib(served.server.pid)
        for label, served in servers.items():
            result.concurrent[label] = concurrent_merged(served, concurrency)
            result.slow[label] = slow_then_gone(served, concurrency)
    finally:
        for served in servers.values():
            served.server.stop()
    return result
