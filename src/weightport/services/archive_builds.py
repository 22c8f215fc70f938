"""Compressed archives, built once in the background and cached in the blob store.

A build is keyed by the archive plan's digest, so it is valid for exactly the bytes it was
made from. Its progress lives in the catalog (visible in the fine-tune JSON and the CLI);
a build interrupted by a crash is marked failed at the next start and can be run again.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from weightport.archive import ArchivePlan, compress_archive
from weightport.catalog.db import Catalog
from weightport.catalog.schema import ArchiveBuild, utcnow
from weightport.observability import metrics
from weightport.storage.base import BlobStore

log = logging.getLogger("weightport.archives")

PENDING, BUILDING, READY, FAILED = "pending", "building", "ready", "failed"
BUILD_STATES = (PENDING, BUILDING, READY, FAILED)


@dataclass(frozen=True)
class BuildTarget:
    """What a build is of, for progress reports."""

    fine_tune_id: str
    step: int
    artifact: str


def archive_builds_of(session: Session, ft_id: str) -> list[ArchiveBuild]:
    """The archive builds of a fine-tune, by step and artifact (for its JSON and the CLI)."""
    query = select(ArchiveBuild).where(ArchiveBuild.fine_tune_id == ft_id)
    return list(session.scalars(query.order_by(ArchiveBuild.step, ArchiveBuild.artifact)))


def usable_build(encoding: str, build: ArchiveBuild | None) -> ArchiveBuild | None:
    """The compressed build a download serves under the ``archive_encoding`` setting, or None
    when it serves the stored encoding."""
    if encoding == "stored" or build is None or build.state != READY:
        return None
    return build if build.blob_sha256 and build.size is not None else None


class ArchiveBuilder:
    """Runs compressed builds one at a time on a worker thread."""

    def __init__(self, catalog: Catalog, store: BlobStore, *, level: int, threads: int) -> None:
        self.catalog = catalog
        self.store = store
        self.level = level
        self.threads = threads
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="archive-build")
        self._lock = threading.Lock()

    def recover(self) -> int:
        """Mark builds a crash interrupted as failed; returns how many."""

        def run(session: Session) -> int:
            stale = session.scalars(
                select(ArchiveBuild).where(ArchiveBuild.state.in_((PENDING, BUILDING)))
            ).all()
            for build in stale:
                build.state, build.error = FAILED, "interrupted by a server restart"
            return len(stale)

        return self.catalog.call(run)

    def ready(self, digest: str) -> ArchiveBuild | None:
        def run(session: Session) -> ArchiveBuild | None:
            build = session.get(ArchiveBuild, digest)
            return build if build is not None and build.state == READY else None

        return self.catalog.call(run)

    def submit(self, plan: ArchivePlan, target: BuildTarget) -> bool:
        """Queue a build unless one exists or runs; True if queued now."""

        def claim(session: Session) -> bool:
            build = session.get(ArchiveBuild, plan.digest)
            if build is not None and build.state != FAILED:
                return False
            if build is None:
                build = ArchiveBuild(plan_digest=plan.digest, level=self.level)
                session.add(build)
            build.state, build.error, build.level = PENDING, "", self.level
            build.fine_tune_id, build.step, build.artifact = (
                target.fine_tune_id,
                target.step,
                target.artifact,
            )
            build.done_bytes, build.total_bytes = 0, plan.tar_size
            return True

        with self._lock:
            if not self.catalog.call(claim):
                return False
        self._pool.submit(self._build, plan)
        return True

    def _update(self, digest: str, **values: object) -> None:
        def run(session: Session) -> None:
            build = session.get(ArchiveBuild, digest)
            if build is not None:
                for name, value in values.items():
                    setattr(build, name, value)
                build.updated_at = utcnow()

        self.catalog.call(run)

    def _build(self, plan: ArchivePlan) -> None:
        digest = plan.digest
        self._update(digest, state=BUILDING)
        upload = self.store.begin_upload()
        last = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= 0.5 or done == total:
                last = now
                self._update(digest, done_bytes=done, total_bytes=total)

        started = time.monotonic()
        try:
            index = compress_archive(
                plan, upload, level=self.level, threads=self.threads, progress=progress
            )
            info = upload.commit()
        except Exception as exc:
            upload.abort()
            log.exception("archive build %s failed", digest)
            metrics.count_error(exc)
            metrics.ARCHIVE_BUILDS_FINISHED.labels("failed").inc()
            self._update(digest, state=FAILED, error=str(exc) or type(exc).__name__)
            return
        metrics.ARCHIVE_BUILDS_FINISHED.labels("ready").inc()
        metrics.ARCHIVE_BUILD_SECONDS.observe(time.monotonic() - started)
        self._update(
            digest,
            state=READY,
            blob_sha256=info.key,
            size=info.size,
            index=json.loads(index.to_json()),
        )
        log.info("archive %s built: %d -> %d bytes", digest[:12], plan.tar_size, info.size)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def builds_by_state(session: Session) -> dict[str, int]:
    """How many archive builds the catalog holds in each state (every state present)."""
    rows = session.execute(
        select(ArchiveBuild.state, func.count()).group_by(ArchiveBuild.state)
    ).all()
    counts = dict.fromkeys(BUILD_STATES, 0)
    for state, count in rows:
        counts[state] = count
    return counts


class ArchiveBuildStates(Collector):
    """``weightport_archive_builds{state}`` from the catalog, read at each scrape."""

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "weightport_archive_builds",
            "Compressed archive builds in the catalog by state (pending = queued, building = "
            "running); the same on every replica.",
            labels=["state"],
        )
        for state, count in self._catalog.call(builds_by_state).items():
            family.add_metric([state], count)
        yield family
