"""The parallel download engine.

Threads, and why:

- *workers* (``connections`` of them, chosen from the path's round-trip time unless set:
  see :class:`~weightport.client.options.DownloadOptions`) take parts from one priority
  queue and stream each part with ``readinto`` into a buffer they reuse, ``os.pwrite``-ing
  it at its offset in the preallocated partial file. The queue hands out files in groups
  of ``connections`` and, within a group, parts round-robin across its files (part 0 of
  each, then part 1, ...), so concurrent writers land in different files where there are
  several: buffered writes to one file serialise on its inode lock, and with 8 workers on
  one file of a 4-file model 17 % of the client's CPU went to spinning on that lock
  (loopback, 2 cores); spread over the 4 files, its system time halved. Groups keep the
  files in flight, and so their finisher threads and hash buffers, bounded by
  ``connections``. A worker that finds the queue empty *splits* the part in flight with
  the most bytes left (:meth:`Transfer.split`) and fetches its upper half: on a link where
  each connection is capped, the last parts would otherwise trickle in over one
  connection each while the others sit idle. Halves smaller than what a request's round
  trip costs at that connection's rate are not worth a request and are left alone;
- sha256 cannot be fed out of order: the worker whose bytes extend a file's digest hashes
  them from its buffer right after writing them, while they are still in the CPU's cache,
  and one *finisher* per started file reads back from the page cache what arrived ahead of
  bytes still missing (:mod:`weightport.client.hashing`), then verifies and renames the file;
- the calling thread watches: progress, periodic checkpoints (fdatasync, then the state
  file), and Ctrl-C, which stops everyone and leaves a resumable state behind.
"""

from __future__ import annotations

import queue
import shutil
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol, runtime_checkable

from weightport.client.errors import (
    ConnectionFailed,
    InsufficientSpace,
    IntegrityError,
    RateLimited,
    RemoteChanged,
    ServerError,
    SignedUrlRejected,
    TransferError,
)
from weightport.client.fetch import ActiveResponses, PartFetch, RestartNeeded, fetch_part
from weightport.client.http import HttpSession, backoff_delay, origin
from weightport.client.options import DownloadOptions, Tuning
from weightport.client.progress import FileProgress, ProgressSink, ProgressSnapshot
from weightport.client.remote import (
    RemoteFile,
    RemoteIdentity,
    listed_identity,
    probe,
    safe_target,
)
from weightport.client.state import partial_path, state_path
from weightport.client.transfer import FileResult, Transfer

#: A queue entry: (group, part, file index, epoch); this one, sorted last, stops a worker.
_STOP = (1 << 62, 0, 0, 0)
#: Seconds an idle worker waits for queued work before it looks for a part to split again.
_IDLE_POLL = 0.05


@dataclass(frozen=True)
class _InFlight:
    """A part a worker is fetching: where it stood when it began, to estimate its rate."""

    transfer: Transfer
    part: int
    epoch: int
    since: float
    done_then: int


class Source(Protocol):
    """Anything that lists the files of a download; listed again for fresh signed URLs."""

    def list_files(self) -> Sequence[RemoteFile]:
        """The files, with URLs valid now."""
        ...


@runtime_checkable
class ListedFrom(Protocol):
    """A source that says which server answers its listing (``scheme://host[:port]``).

    When the files are served from there too, the listing's round trip stands for theirs
    and the files need no probe (see :meth:`Downloader._identify`).
    """

    @property
    def origin(self) -> str:
        """The listing's server."""
        ...


@dataclass(frozen=True)
class DownloadResult:
    """Every file (listing order), bytes fetched over the network this run, and wall time.

    ``tuning`` is what the run settled on: connections, part size, the path's round trip.
    """

    files: tuple[FileResult, ...]
    downloaded_bytes: int
    seconds: float
    tuning: Tuning


def download(
    source: Source,
    dest: Path,
    options: DownloadOptions | None = None,
    progress: ProgressSink | None = None,
) -> DownloadResult:
    """Download every file of ``source`` below ``dest``; resumable, verified, atomic per file.

    Raises a :class:`~weightport.client.errors.DownloadError`; on ``KeyboardInterrupt`` the
    partial files and their state stay on disk and the next call continues them.
    """
    return Downloader(source, dest, options or DownloadOptions(), progress).run()


class Downloader:
    """One run of :func:`download` (see the module docstring for the threads involved)."""

    def __init__(
        self,
        source: Source,
        dest: Path,
        options: DownloadOptions,
        progress: ProgressSink | None = None,
    ) -> None:
        self.source = source
        self.dest = dest
        self.options = options.validate()
        self.progress = progress
        self.session = HttpSession(connections=self.options.most_connections)
        self.tuning = Tuning(self.options.most_connections, 0, 0.0)
        self.transfers: list[Transfer] = []
        self.by_index: dict[int, Transfer] = {}
        self.skipped: dict[int, FileResult] = {}
        self.queue: queue.PriorityQueue[tuple[int, int, int, int]] = queue.PriorityQueue()
        self.stop = threading.Event()
        self.wakeup = threading.Event()
        self.failure: BaseException | None = None
        self.state_lock = threading.Lock()
        self.refresh_lock = threading.Lock()
        self.generation = 0
        self.refreshes = 0
        self.workers: list[threading.Thread] = []
        self.group: dict[int, int] = {}
        self.finishers: list[threading.Thread] = []
        self.active = ActiveResponses()
        self.in_flight: dict[int, _InFlight] = {}  # worker number -> its part

    # -- the calling thread ------------------------------------------------------------

    def run(self) -> DownloadResult:
        """Prepare, download, verify; raise the first failure (see :func:`download`)."""
        started = time.monotonic()
        try:
            self._prepare()
            self._start_workers()
            self._watch()
        finally:
            self._shutdown()
        if self.failure is not None:
            raise self.failure
        self._report()
        results = {t.index: t.result for t in self.transfers if t.result is not None}
        results.update(self.skipped)
        files = tuple(results[i] for i in sorted(results))
        fetched = sum(r.size - r.resumed_bytes for r in files if not r.skipped)
        return DownloadResult(files, fetched, time.monotonic() - started, self.tuning)

    def _prepare(self) -> None:
        began = time.monotonic()
        listing = list(self.source.list_files())
        listed_in = time.monotonic() - began
        seen: set[str] = set()
        targets = []
        for remote in listing:
            if remote.relpath in seen:
                raise RemoteChanged(f"the listing names {remote.relpath!r} twice")
            seen.add(remote.relpath)
            targets.append(safe_target(self.dest, remote.relpath))
        identities, rtt = self._identify(listing, targets, listed_in)
        transfers = [
            Transfer(i, remote, identity, target, always_sync=self.options.always_sync)
            for i, (remote, identity, target) in enumerate(
                zip(listing, identities, targets, strict=True)
            )
        ]
        for t in transfers:
            existing = t.already_in_place()
            if existing is not None:
                t.discard_leftovers()
                self.skipped[t.index] = existing
            else:
                self.transfers.append(t)
        resumes = [t.resumable_state() for t in self.transfers]
        fresh = sum(t.size for t, r in zip(self.transfers, resumes, strict=True) if r is None)
        self._check_space(fresh)
        remaining = fresh + sum(r.size - sum(r.done) for r in resumes if r is not None)
        self.tuning = self.options.tune(rtt, remaining)
        for t, resume in zip(self.transfers, resumes, strict=True):
            t.open(self.tuning.part_size, resume)
            self.by_index[t.index] = t

    def _identify(
        self, listing: Sequence[RemoteFile], targets: Sequence[Path], listed_in: float
    ) -> tuple[list[RemoteIdentity], float]:
        """Each file's identity and the path's round trip (seconds), probing only if needed.

        A fresh download whose listing gives every file's size and sha256, from the server
        that serves the files, starts its parts right away: the listing's round trip stands
        for the probes', and each file's first answer confirms what the listing promised.
        That saves a round trip and a connection set-up per download (100 ms of a 2.2 s,
        1 GiB download over a 40 ms path: BENCHMARKS.md, downloader_link). Otherwise, and
        when a partial file from an earlier run is there (its state is matched against the
        server's ETag), every file is probed with a one-byte request, in parallel.
        """
        listed = [listed_identity(remote) for remote in listing]
        here = self.source.origin if isinstance(self.source, ListedFrom) else None
        if (
            here is not None
            and all(origin(remote.url) == here for remote in listing)
            and not any(partial_path(t).exists() or state_path(t).exists() for t in targets)
        ):
            known = [identity for identity in listed if identity is not None]
            if len(known) == len(listing):
                return known, listed_in
        workers = max(1, min(self.options.most_connections, len(listing)))
        with ThreadPoolExecutor(workers, thread_name_prefix="wp-probe") as pool:
            timed = list(pool.map(self._timed_probe, listing))
        return [identity for identity, _ in timed], min((s for _, s in timed), default=0.0)

    def _timed_probe(self, remote: RemoteFile) -> tuple[RemoteIdentity, float]:
        began = time.monotonic()
        identity = self._probe(remote)
        return identity, time.monotonic() - began

    def _probe(self, remote: RemoteFile) -> RemoteIdentity:
        attempt = 0
        while True:
            try:
                return probe(self.session, remote)
            except (ConnectionFailed, RateLimited, ServerError):
                attempt += 1
                if attempt > self.options.retries or self.stop.is_set():
                    raise
                self.stop.wait(backoff_delay(attempt))

    def _check_space(self, needed: int) -> None:
        if not self.options.check_free_space or needed == 0:
            return
        self.dest.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(self.dest).free
        if needed > free:
            raise InsufficientSpace(
                f"{self.dest} has {free / 1e9:.2f} GB free, the download needs "
                f"{needed / 1e9:.2f} GB more"
            )

    def _start_workers(self) -> None:
        pending = 0
        left = 0
        connections = self.tuning.connections
        for position, t in enumerate(self.transfers):
            self.group[t.index] = position // connections
            tasks = [i for i, part in enumerate(t.parts) if t.done[i] < part.size]
            for i in tasks:
                self._enqueue(t, i)
            pending += len(tasks)
            left += sum(t.parts[i].size - t.done[i] for i in tasks)
            if not tasks:
                self._start_finisher(t)  # complete on disk already (or empty)
        # More workers than parts only pay when there are parts worth splitting.
        splittable = left // max(1, 2 * self.options.buffer_size)
        for n in range(min(connections, max(pending, splittable if pending else 0))):
            thread = threading.Thread(target=self._worker, args=(n,), name=f"wp-worker-{n}")
            thread.start()
            self.workers.append(thread)

    def _enqueue(self, t: Transfer, part: int) -> None:
        # Sorted by group, then part, then file: see the module docstring.
        self.queue.put((self.group[t.index], part, t.index, t.epoch))

    def _watch(self) -> None:
        next_checkpoint = time.monotonic() + self.options.checkpoint_interval
        while self.failure is None:
            self._report()
            if all(t.phase == "done" for t in self.transfers):
                return
            self.wakeup.wait(0.1)
            self.wakeup.clear()
            if time.monotonic() >= next_checkpoint:
                for t in self.transfers:
                    if t.started:
                        t.checkpoint()
                next_checkpoint = time.monotonic() + self.options.checkpoint_interval

    def _report(self) -> None:
        if self.progress is None:
            return
        files = []
        for t in self.transfers:
            files.append(FileProgress(t.relpath, t.size, t.downloaded(), t.phase))
        for result in self.skipped.values():
            files.append(FileProgress(result.relpath, result.size, result.size, "skipped"))
        resumed = sum(t.resumed_bytes for t in self.transfers)
        self.progress(ProgressSnapshot(tuple(files), resumed))

    def _shutdown(self) -> None:
        self.stop.set()
        self.active.shutdown_all()  # unblock reads now rather than after the read timeout
        for _ in self.workers:
            self.queue.put(_STOP)
        for thread in self.workers:
            thread.join()
        with self.state_lock:  # no finisher starts once the workers are gone
            finishers = list(self.finishers)
        for thread in finishers:
            thread.join()
        try:
            for t in self.transfers:
                if t.started and t.phase not in ("done", "failed"):
                    t.checkpoint()
        finally:
            for t in self.transfers:
                t.close()
            self.session.close()

    def _fail(self, exc: BaseException) -> None:
        with self.state_lock:
            if self.failure is None:
                self.failure = exc
        self.stop.set()
        self.wakeup.set()

    # -- worker threads ----------------------------------------------------------------

    def _worker(self, number: int) -> None:
        buf = memoryview(bytearray(self.options.buffer_size))
        while not self.stop.is_set():
            task = self._next_task()
            if task is None:
                return
            t, part, epoch = task
            try:
                self._start_finisher(t)
                with t.lock:
                    done_then = t.done[part] if t.epoch == epoch else 0
                flight = _InFlight(t, part, epoch, time.monotonic(), done_then)
                with self.state_lock:
                    self.in_flight[number] = flight
                try:
                    self._run_part(t, part, epoch, buf)
                finally:
                    with self.state_lock:
                        self.in_flight.pop(number, None)
            except BaseException as exc:
                self._fail(exc)
                return

    def _next_task(self) -> tuple[Transfer, int, int] | None:
        """The next queued part, else the upper half of a part in flight; ``None``: stop."""
        while not self.stop.is_set():
            try:
                task = self.queue.get_nowait()
            except queue.Empty:
                stolen = self._split_largest()
                if stolen is not None:
                    return stolen
                try:
                    task = self.queue.get(timeout=_IDLE_POLL)
                except queue.Empty:
                    continue
            if task == _STOP:
                return None
            _, part, index, epoch = task
            return self.by_index[index], part, epoch
        return None

    def _split_largest(self) -> tuple[Transfer, int, int] | None:
        """Split the in-flight part with the most bytes left, if that is worth a request.

        A half must take longer than two round trips at the rate its connection has shown
        (one for the new request, one for the connection the split closes), or the split
        costs more than it saves.
        """
        now = time.monotonic()
        with self.state_lock:
            flights = list(self.in_flight.values())
        best: tuple[int, int, _InFlight] | None = None
        for flight in flights:
            t = flight.transfer
            with t.lock:
                if t.epoch != flight.epoch:
                    continue
                done = t.done[flight.part]
                left = t.parts[flight.part].size - done
            rate = (done - flight.done_then) / max(1e-3, now - flight.since)
            smallest = max(self.options.buffer_size, int(2 * rate * self.tuning.rtt))
            if left >= 2 * smallest and (best is None or left > best[0]):
                best = (left, smallest, flight)
        if best is None:
            return None
        _, smallest, flight = best
        t = flight.transfer
        part = t.split(flight.part, flight.epoch, keep=self.options.buffer_size, smallest=smallest)
        return None if part is None else (t, part, flight.epoch)

    def _run_part(self, t: Transfer, part: int, epoch: int, buf: memoryview) -> None:
        attempt = 0
        while not self.stop.is_set():
            with t.lock:
                if t.epoch != epoch:  # a stale task: the file started over meanwhile
                    return
                before = t.done[part]
                if before == t.parts[part].size:
                    return
                span = t.parts[part]
                hasher = t.hasher if self.options.hash_while_downloading else None
                # Everything before this request is on disk, or at least this part so far.
                on_disk_from = 0 if t.frontier() >= span.start + before else span.start
                job = PartFetch(
                    t.remote, t.identity, span, before, t.fd, epoch, hasher, on_disk_from
                )
            generation = self.generation
            try:
                # Returns early, without error, if the server sent less than asked: loop on.
                fetch_part(self.session, job, buf, t, self.stop, self.active)
            except RestartNeeded as exc:
                self._restart(t, epoch, exc)
                return
            except SignedUrlRejected as exc:
                self._refresh_urls(generation, exc)
            except (ConnectionFailed, RateLimited, ServerError) as exc:
                with t.lock:
                    progressed = t.epoch == epoch and t.done[part] > before
                attempt = 1 if progressed else attempt + 1
                if attempt > self.options.retries:
                    raise TransferError(
                        f"{t.relpath}: {exc} (gave up after {self.options.retries} retries)"
                    ) from exc
                self.stop.wait(backoff_delay(attempt))

    def _refresh_urls(self, generation: int, exc: SignedUrlRejected) -> None:
        with self.refresh_lock:
            if generation != self.generation:
                return  # another worker already fetched fresh URLs
            if self.refreshes >= self.options.url_refreshes:
                raise SignedUrlRejected(
                    f"{exc.message} (still refused after {self.refreshes} fresh URLs)",
                    status=exc.status,
                    code=exc.code,
                )
            self.refreshes += 1
            self._apply_listing(self.source.list_files())
            self.generation += 1

    def _apply_listing(self, listing: Sequence[RemoteFile]) -> dict[str, RemoteFile]:
        by_path = {remote.relpath: remote for remote in listing}
        for t in self.transfers:
            fresh = by_path.get(t.relpath)
            if fresh is None:
                raise RemoteChanged(f"{t.relpath} is no longer part of the download")
            t.update_remote(fresh)
        return by_path

    def _restart(self, t: Transfer, epoch: int, reason: RestartNeeded) -> None:
        with t.io_lock:
            if t.epoch != epoch:
                return
            if t.restarts >= self.options.restarts:
                raise RemoteChanged(
                    f"{t.relpath}: {reason} (gave up after {t.restarts} fresh starts)"
                )
            t.restarts += 1
            with self.refresh_lock:
                remote = self._apply_listing(self.source.list_files())[t.relpath]
                self.generation += 1
            identity = self._probe(remote)
            if reason.no_ranges:
                identity = replace(identity, ranges=False)
            t.restart(remote, identity, self.tuning.part_size)
            for i in range(len(t.parts)):
                self._enqueue(t, i)

    # -- finisher threads --------------------------------------------------------------

    def _start_finisher(self, t: Transfer) -> None:
        with self.state_lock:
            if t.started:
                return
            t.started = True
            t.phase = "downloading"
            thread = threading.Thread(target=self._finish, args=(t,), name=f"wp-finish-{t.index}")
            thread.start()
            self.finishers.append(thread)

    def _finish(self, t: Transfer) -> None:
        try:
            while not self.stop.is_set():
                epoch = t.epoch
                digest = None
                if t.expected_sha256:
                    follow = self.options.hash_while_downloading
                    digest = t.hash_in_order(epoch, self.stop, follow=follow)
                if not t.wait_complete(epoch, self.stop):
                    continue
                t.phase = "verifying"
                try:
                    if t.finalize(epoch, digest):
                        self.wakeup.set()
                        return
                except IntegrityError:
                    if not t.resumed_bytes:
                        raise
                    # Bytes an earlier run recorded were lost (an OS crash before writeback,
                    # see weightport.client.state): start this file over once, quietly.
                    self._restart(t, epoch, RestartNeeded("resumed bytes failed verification"))
        except BaseException as exc:
            self._fail(exc)
