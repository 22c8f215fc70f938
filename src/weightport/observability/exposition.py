"""Rendering the metrics for a scrape, from one process or from every worker.

One process (the default ``serve``) renders its own registry, with the process, Python GC
and platform metrics prometheus-client adds. With ``serve --workers N`` every worker writes
its metrics into files under one directory (prometheus-client's multiprocess mode, chosen by
``PROMETHEUS_MULTIPROC_DIR``, which the supervisor sets for its workers before they start):
a scrape answered by any worker — or by the supervisor on a separate metrics port — sums the
counters and histograms of all of them, the dead ones included (so counters never go back),
and the active-download gauge of the live ones. Per-worker scraping is impossible anyway:
the workers share one port and the kernel picks which one answers.
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

#: The variable prometheus-client reads (at import) to write metrics into shared files.
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST


def multiprocess_dir() -> Path | None:
    """The shared metrics directory of this process's worker group, if it is in one."""
    value = os.environ.get(MULTIPROCESS_ENV, "")
    return Path(value) if value else None


def render(*extra: Collector, directory: Path | None = None) -> bytes:
    """The exposition text of every metric, plus ``extra`` collectors (read at each scrape).

    ``directory``: aggregate the workers' files there instead of this process's registry
    (defaults to :func:`multiprocess_dir`).
    """
    directory = directory or multiprocess_dir()
    if directory is not None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
        text = generate_latest(registry)
    else:
        text = generate_latest(REGISTRY)
    if extra:
        # auto_describe off: registering must not run a collector (it may query the catalog).
        own = CollectorRegistry(auto_describe=False)
        for collector in extra:
            own.register(collector)
        text += generate_latest(own)
    return text


def forget_worker(pid: int, directory: Path) -> None:
    """Drop a dead worker's live gauges (its counters stay: totals never go back)."""
    mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
