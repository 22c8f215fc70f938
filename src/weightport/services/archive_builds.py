"""Compressed archives, built once in the background and cached in the blob store.

A build is keyed by the archive plan's digest, so it is valid for exactly the bytes it was
made from. The catalog is both its queue and its lock, so any number of replicas (and
workers) share the work without a word between them:

- :meth:`ArchiveBuilder.submit` inserts the build ``pending`` (a unique key: asked twice, by
  any replicas, it exists once);
- a builder *claims* it in one transaction — a ``pending`` build, or a ``building`` one whose
  lease ran out — taking the row with ``SELECT … FOR UPDATE SKIP LOCKED`` on PostgreSQL (on
  SQLite the write transaction alone excludes everyone else), so exactly one wins;
- while it builds, a heartbeat renews the lease; if the heartbeat finds the build no longer
  its own (it stalled past the lease and another replica took over), it stops and discards
  its output;
- a builder that dies simply stops renewing: the build is re-taken when its lease expires.
  A build whose owners keep dying is failed after :data:`MAX_ATTEMPTS` claims.

Lease times are the replicas' own clocks: they must agree to well within a lease (NTP does).
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from weightport.archive import ArchivePlan, compress_archive
from weightport.catalog.db import Catalog
from weightport.catalog.schema import ArchiveBuild, FineTune, utcnow
from weightport.observability import metrics
from weightport.services.finetune_archives import PlanCache, select_artifact
from weightport.services.gc import pin_stored
from weightport.storage.base import BlobStore

log = logging.getLogger("weightport.archives")

#: Claims of one build before it is failed (its builders keep dying: out of memory?).
MAX_ATTEMPTS = 3
#: The ``checkpoint`` download parameter that selects each built artifact again.
_CHECKPOINT_OF = {"merged": "merged", "adapter": "adapter", "model": "model_output_path"}


class BuildState(StrEnum):
    """Where a build is; only :class:`ArchiveBuilder` moves it."""

    PENDING = "pending"
    BUILDING = "building"
    READY = "ready"
    FAILED = "failed"


BUILD_STATES = tuple(BuildState)


@dataclass(frozen=True)
class BuildTarget:
    """What a build is of, for progress reports and for planning it again on any replica."""

    fine_tune_id: str
    step: int
    artifact: str


class BuildLost(Exception):
    """Another replica owns the build now: this one stops and discards what it made."""


class BuildStopped(Exception):
    """This process is stopping: the build is handed back for another builder to claim."""


def archive_builds_of(session: Session, ft_id: str) -> list[ArchiveBuild]:
    """The archive builds of a fine-tune, by step and artifact (for its JSON and the CLI)."""
    query = select(ArchiveBuild).where(ArchiveBuild.fine_tune_id == ft_id)
    return list(session.scalars(query.order_by(ArchiveBuild.step, ArchiveBuild.artifact)))


def usable_build(encoding: str, build: ArchiveBuild | None) -> ArchiveBuild | None:
    """The compressed build a download serves under the ``archive_encoding`` setting, or None
    when it serves the stored encoding."""
    if encoding == "stored" or build is None or build.state != BuildState.READY:
        return None
    return build if build.blob_sha256 and build.size is not None else None


def replica_name() -> str:
    """This process's name as a build owner: host, pid and a nonce (pids get reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Claim:
    """A build this process owns until its lease runs out."""

    digest: str
    target: BuildTarget
    attempt: int


class ArchiveBuilder:
    """Claims and runs compressed builds, one at a time, on a thread of this process.

    ``lease`` is how long a claim holds without renewal, in seconds; the heartbeat renews it
    every third of that, and idle builders look for unclaimed work every half of it.
    """

    def __init__(
        self,
        catalog: Catalog,
        store: BlobStore,
        plans: PlanCache,
        *,
        level: int,
        threads: int,
        lease: float,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.plans = plans
        self.level = level
        self.threads = threads
        self.lease = lease
        self.owner = replica_name()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ asking for builds

    def ready(self, digest: str) -> ArchiveBuild | None:
        """The finished build of ``digest``, if there is one."""

        def run(session: Session) -> ArchiveBuild | None:
            build = session.get(ArchiveBuild, digest)
            return build if build is not None and build.state == BuildState.READY else None

        return self.catalog.call(run, readonly=True)

    def submit(self, plan: ArchivePlan, target: BuildTarget) -> bool:
        """Queue a build of ``plan`` unless one exists (a failed one is queued again).

        Returns True if this call queued it. Whichever replica claims it first builds it.
        """

        def queue(session: Session) -> bool:
            build = session.get(ArchiveBuild, plan.digest, with_for_update=True)
            if build is not None and build.state != BuildState.FAILED:
                return False
            if build is None:
                build = ArchiveBuild(plan_digest=plan.digest)
                try:
                    with session.begin_nested():
                        session.add(build)
                        self._reset(build, plan, target)
                except IntegrityError:
                    return False  # another replica inserted it a moment ago
                return True
            self._reset(build, plan, target)
            return True

        queued = self.catalog.call(queue)
        if queued:
            self._wake.set()
        return queued

    def _reset(self, build: ArchiveBuild, plan: ArchivePlan, target: BuildTarget) -> None:
        build.state, build.error, build.level = BuildState.PENDING, "", self.level
        build.fine_tune_id, build.step, build.artifact = (
            target.fine_tune_id,
            target.step,
            target.artifact,
        )
        build.done_bytes, build.total_bytes = 0, plan.tar_size
        build.owner, build.lease_until, build.attempts = "", None, 0
        build.updated_at = utcnow()

    # ------------------------------------------------------------------ doing builds

    def start(self) -> None:
        """Start looking for builds to claim (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="archive-builder", daemon=True)
            self._thread.start()

    def close(self, wait: float = 10.0) -> None:
        """Stop claiming; a build in progress stops at its next frame and is handed back
        (waits up to ``wait`` seconds for that)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(wait)

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                claim = self.catalog.call(self.claim)
            except Exception:
                # The catalog is unreachable or busy: try again at the next sweep.
                log.warning("cannot look for archive builds to claim", exc_info=True)
                claim = None
            if claim is not None:
                self._run(claim)
                continue
            self._wake.wait(self.lease / 2)
            self._wake.clear()

    def claim(self, session: Session) -> Claim | None:
        """Claim the oldest claimable build for this process (one transaction's work)."""
        now = utcnow()
        claimable = or_(
            ArchiveBuild.state == BuildState.PENDING,
            (ArchiveBuild.state == BuildState.BUILDING) & (ArchiveBuild.lease_until < now),
        )
        query = (
            select(ArchiveBuild)
            .where(claimable)
            .order_by(ArchiveBuild.created_at)
            .limit(8)
            .with_for_update(skip_locked=True)
        )
        for build in session.scalars(query):
            if build.state == BuildState.BUILDING:
                log.warning(
                    "archive build %s: owner %s stopped renewing its lease; taking it over",
                    build.plan_digest[:12],
                    build.owner,
                )
            build.attempts += 1
            build.updated_at = now
            if build.attempts > MAX_ATTEMPTS:
                build.state = BuildState.FAILED
                build.error = (
                    f"abandoned: {MAX_ATTEMPTS} builders stopped without finishing it "
                    "(crashed or ran out of memory?); ask for it again to retry"
                )
                build.owner, build.lease_until = "", None
                continue
            build.state, build.owner, build.error = BuildState.BUILDING, self.owner, ""
            build.lease_until = _lease_end(self.lease)
            build.done_bytes = 0
            target = BuildTarget(build.fine_tune_id or "", build.step or 0, build.artifact or "")
            return Claim(build.plan_digest, target, build.attempts)
        return None

    def renew(self, digest: str, done: int | None = None) -> None:
        """Extend our lease (and record progress); :class:`BuildLost` if it is not ours."""

        def run(session: Session) -> bool:
            build = session.get(ArchiveBuild, digest, with_for_update=True)
            if build is None or build.owner != self.owner or build.state != BuildState.BUILDING:
                return False
            build.lease_until = _lease_end(self.lease)
            if done is not None:
                build.done_bytes = done
            build.updated_at = utcnow()
            return True

        if not self.catalog.call(run):
            raise BuildLost(digest)

    def _finish(self, digest: str, **values: object) -> None:
        """Record the outcome, if the build is still ours."""

        def run(session: Session) -> None:
            blob = values.get("blob_sha256")
            if isinstance(blob, str):
                # Garbage collection may be deleting identical bytes this instant (Aborted:
                # the build fails and is asked for again).
                pin_stored(session, self.store, [blob])
            build = session.get(ArchiveBuild, digest, with_for_update=True)
            if build is None or build.owner != self.owner or build.state != BuildState.BUILDING:
                raise BuildLost(digest)
            for name, value in values.items():
                setattr(build, name, value)
            build.owner, build.lease_until = "", None
            build.updated_at = utcnow()

        self.catalog.call(run)

    def _plan(self, claim: Claim) -> ArchivePlan:
        """Plan the claimed build again from the catalog (the replica that asked for it may
        be another one, or gone)."""
        target = claim.target
        job = self.catalog.call(lambda s: s.get(FineTune, target.fine_tune_id), readonly=True)
        if job is None:
            raise LookupError(f"fine-tune {target.fine_tune_id} no longer exists")
        checkpoint = _CHECKPOINT_OF.get(target.artifact)
        selection = select_artifact(job, checkpoint, str(target.step))
        plan = self.plans.get(self.store, job, selection)
        if plan.digest != claim.digest:
            raise LookupError("the checkpoint's files changed since this build was asked for")
        return plan

    def _run(self, claim: Claim) -> None:
        digest = claim.digest
        heartbeat = _Heartbeat(
            lambda done: self.renew(digest, done), self.lease / 3, self._stop, digest
        )
        upload = None
        started = time.monotonic()
        try:
            plan = self._plan(claim)
            upload = self.store.begin_upload()
            heartbeat.start()
            index = compress_archive(
                plan, upload, level=self.level, threads=self.threads, progress=heartbeat.progress
            )
            heartbeat.stop()
            info = upload.commit()
            upload = None
            self._finish(
                digest,
                state=BuildState.READY,
                blob_sha256=info.key,
                size=info.size,
                done_bytes=plan.tar_size,
                index=json.loads(index.to_json()),
            )
            metrics.ARCHIVE_BUILDS_FINISHED.labels("ready").inc()
            metrics.ARCHIVE_BUILD_SECONDS.observe(time.monotonic() - started)
            log.info("archive %s built: %d -> %d bytes", digest[:12], plan.tar_size, info.size)
        except BuildLost:
            log.warning("archive build %s was taken over by another replica", digest[:12])
        except BuildStopped:
            self._hand_back(digest)
        except Exception as exc:
            log.exception("archive build %s failed", digest[:12])
            metrics.count_error(exc)
            metrics.ARCHIVE_BUILDS_FINISHED.labels("failed").inc()
            self._record_failure(digest, str(exc) or type(exc).__name__)
        finally:
            heartbeat.stop()
            if upload is not None:
                upload.abort()

    def _hand_back(self, digest: str) -> None:
        """This process is stopping: make the build claimable at once, not after the lease."""

        def run(session: Session) -> None:
            build = session.get(ArchiveBuild, digest, with_for_update=True)
            if build is not None and build.owner == self.owner:
                build.state, build.owner, build.lease_until = BuildState.PENDING, "", None
                build.attempts = max(build.attempts - 1, 0)  # not a crash
                build.updated_at = utcnow()

        try:
            self.catalog.call(run)
        except Exception:
            log.warning("cannot hand back build %s; its lease will expire", digest[:12])

    def _record_failure(self, digest: str, error: str) -> None:
        try:
            self._finish(digest, state=BuildState.FAILED, error=error)
        except BuildLost:
            pass
        except Exception:
            # The catalog is unreachable: the lease expires and the build is retried.
            log.warning("cannot record the failure of build %s", digest[:12], exc_info=True)


def _lease_end(lease: float) -> datetime:
    return utcnow() + timedelta(seconds=lease)


class _Heartbeat:
    """Renews a build's lease every ``interval`` seconds and carries progress to the catalog.

    ``renew(done)`` raises :class:`BuildLost` when the build is no longer ours; the build
    thread learns it at its next :meth:`progress` call, as it learns that ``stopping`` is set.
    """

    def __init__(
        self,
        renew: Callable[[int | None], None],
        interval: float,
        stopping: threading.Event,
        digest: str,
    ) -> None:
        self._renew = renew
        self._interval = interval
        self._stopping = stopping
        self._digest = digest
        self._done: int | None = None
        self._lost = False
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="build-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._halt.set()
        if self._thread.is_alive():
            self._thread.join()

    def progress(self, done: int, _total: int) -> None:
        """``compress_archive``'s callback: note progress; stop if lost or stopping."""
        self._done = done
        if self._lost:
            raise BuildLost(self._digest)
        if self._stopping.is_set():
            raise BuildStopped(self._digest)

    def _beat(self) -> None:
        last = time.monotonic()
        # Progress reaches the catalog every half second; the lease is renewed at least
        # every interval even when no frame finished (a slow read, a big merged tensor).
        while not self._halt.wait(min(self._interval, 0.5)):
            if self._done is None and time.monotonic() - last < self._interval:
                continue
            done, self._done = self._done, None
            try:
                self._renew(done)
            except BuildLost:
                self._lost = True
                return
            except Exception:
                # A catalog hiccup: the next beat tries again; the lease has slack for it.
                log.warning("cannot renew the lease of build %s", self._digest[:12], exc_info=True)
                continue
            last = time.monotonic()


def builds_by_state(session: Session) -> dict[str, int]:
    """How many archive builds the catalog holds in each state (every state present)."""
    rows = session.execute(
        select(ArchiveBuild.state, func.count()).group_by(ArchiveBuild.state)
    ).all()
    counts: dict[str, int] = {state.value: 0 for state in BUILD_STATES}
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
        for state, count in self._catalog.call(builds_by_state, readonly=True).items():
            family.add_metric([state], count)
        yield family
