"""One file's download on disk: the preallocated partial, its parts, resume and the final rename.

A :class:`Transfer` is shared by the worker threads that fetch its parts and the thread that
hashes and finishes it. Its ``lock`` guards the progress counters; ``io_lock`` serialises the
slow whole-file steps (checkpoint, restart, finalise) against each other. A restart (the
server's bytes changed, or it stopped honouring ``Range``) moves to a new *epoch*: a fresh
partial file with a new inode, so a worker still writing for the old epoch only touches an
unlinked file, and its progress is refused by :meth:`Transfer.record`.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

from weightport.client.errors import InsufficientSpace, IntegrityError
from weightport.client.hashing import InOrderHash
from weightport.client.remote import RemoteFile, RemoteIdentity
from weightport.client.state import (
    Part,
    ResumeState,
    load_state,
    partial_path,
    plan_parts,
    remove_quietly,
    remove_state,
    save_state,
    state_path,
)

HASH_CHUNK = 4 << 20


@dataclass(frozen=True)
class FileResult:
    """How one file ended up: where, how big, and how it was verified.

    ``verified`` is ``"sha256"`` when a digest was offered and matched, ``"size+etag"`` when
    only the size and a stable strong ETag could be checked, ``"size"`` when not even an
    ETag was sent. ``resumed_bytes`` came from an earlier run's partial file.
    ``reread_bytes`` is how much of the file the hash read back from disk: resumed bytes,
    and those that arrived ahead of bytes still missing; the rest was hashed as it arrived.
    """

    relpath: str
    path: Path
    size: int
    sha256: str | None
    verified: str
    resumed_bytes: int = 0
    skipped: bool = False
    reread_bytes: int = 0


class Transfer:
    """The download of one :class:`RemoteFile` into its partial file (see module docstring)."""

    def __init__(
        self,
        index: int,
        remote: RemoteFile,
        identity: RemoteIdentity,
        target: Path,
        *,
        always_sync: bool = False,
    ) -> None:
        self.index = index
        self.remote = remote
        self.identity = identity
        self.target = target
        self.partial = partial_path(target)
        self.state_file = state_path(target)
        self.expected_sha256 = remote.sha256 or identity.sha256
        self.always_sync = always_sync
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.io_lock = threading.Lock()
        self.epoch = 0
        self.fd = -1
        self.retired_fds: list[int] = []
        self.parts: list[Part] = []
        self.done: list[int] = []
        #: This epoch's digest (``None`` without an expected sha256); workers feed it too.
        self.hasher: InOrderHash | None = None
        self.unannounced = 0  # bytes recorded since waiters were last woken
        self.resumed_bytes = 0
        self.restarts = 0
        self.started = False
        self.phase = "queued"
        self.result: FileResult | None = None

    @property
    def relpath(self) -> str:
        return self.remote.relpath

    @property
    def size(self) -> int:
        return self.identity.size

    @property
    def needs_sync(self) -> bool:
        """Whether bytes must reach the disk before they are recorded or renamed.

        Only when no sha256 will re-check them (see :mod:`weightport.client.state`).
        """
        return self.always_sync or self.expected_sha256 is None

    def resumable_state(self) -> ResumeState | None:
        """The state of an earlier run whose partial file this run can continue, if any."""
        state = load_state(self.state_file)
        if (
            state is not None
            and self.identity.ranges
            and state.matches(size=self.size, etag=self.identity.etag, sha256=self.expected_sha256)
            and _file_size(self.partial) == self.size
        ):
            return state
        return None

    def open(self, part_size: int, resume: ResumeState | None) -> None:
        """Open the partial file: continue ``resume`` (from :meth:`resumable_state`) or start."""
        self.target.parent.mkdir(parents=True, exist_ok=True)
        if resume is not None:
            self.fd = os.open(self.partial, os.O_RDWR)
            self.parts = list(resume.parts)
            self.done = list(resume.done)
            self.resumed_bytes = sum(self.done)
            self.hasher = self._new_hasher()
            return
        self._create(part_size)

    def _create(self, part_size: int) -> None:
        self.discard_leftovers()
        self.fd = os.open(self.partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        preallocate(self.fd, self.size, self.relpath)
        # Without Range support the file can only be fetched as one stream.
        self.parts = list(
            plan_parts(self.size, part_size if self.identity.ranges else max(1, self.size))
        )
        self.done = [0] * len(self.parts)
        self.resumed_bytes = 0
        self.hasher = self._new_hasher()

    def _new_hasher(self) -> InOrderHash | None:
        return InOrderHash() if self.expected_sha256 is not None else None

    def restart(self, remote: RemoteFile, identity: RemoteIdentity, part_size: int) -> None:
        """Start over in a new epoch on a new partial file (caller holds ``io_lock``)."""
        with self.lock:
            self.epoch += 1
            self.retired_fds.append(self.fd)
            self.remote = remote
            self.identity = identity
            self.expected_sha256 = remote.sha256 or identity.sha256
            self._create(part_size)
            self.phase = "downloading"
            self.changed.notify_all()

    def confirm_etag(self, epoch: int, etag: str | None) -> bool:
        """Check an answer's ETag against the file's; ``False``: the server's bytes changed.

        An identity taken from the listing (not yet ``confirmed``) adopts the first answer's
        ETag; every later answer must carry the same one, as after a probe.
        """
        with self.lock:
            if epoch != self.epoch:
                return True  # a stale answer: record() refuses its bytes anyway
            if not self.identity.confirmed:
                self.identity = replace(self.identity, etag=etag, confirmed=True)
                return True
            return self.identity.etag is None or self.identity.etag == etag

    def update_remote(self, remote: RemoteFile) -> None:
        """Use a freshly signed URL for the parts still to fetch."""
        with self.lock:
            self.remote = remote

    def record(self, part: int, epoch: int, nbytes: int) -> int | None:
        """Count ``nbytes`` written for ``part``; the part's end now, ``None`` if the epoch is over.

        The end can move down while the part downloads (:meth:`split`): the caller stops there.
        """
        with self.lock:
            if epoch != self.epoch:
                return None
            self.done[part] += nbytes
            # The waiters (the hasher, wait_complete) act on whole hash chunks or finished
            # parts only; waking them for every write is a context switch each for nothing.
            self.unannounced += nbytes
            if self.unannounced >= HASH_CHUNK or self.done[part] >= self.parts[part].size:
                self.unannounced = 0
                self.changed.notify_all()
            return self.parts[part].end

    def split(self, part: int, epoch: int, *, keep: int, smallest: int) -> int | None:
        """Hand the upper half of what ``part`` still lacks to a new part; its index, or ``None``.

        The worker fetching ``part`` keeps the lower half, plus at least ``keep`` bytes past
        what it has recorded (the read it may have in flight must not cross the new end).
        Nothing is split unless both halves get at least ``smallest`` bytes.
        """
        with self.lock:
            if epoch != self.epoch or not self.identity.ranges:
                return None
            old = self.parts[part]
            pos = old.start + self.done[part]
            left = old.end - pos
            cut = pos + max(keep, left // 2)
            if left < 2 * smallest or cut - pos < smallest or old.end - cut < smallest:
                return None
            self.parts[part] = Part(part, old.start, cut)
            new = Part(len(self.parts), cut, old.end)
            self.parts.append(new)
            self.done.append(0)
            return new.index

    def downloaded(self) -> int:
        """Bytes on disk in the current partial file."""
        with self.lock:
            return sum(self.done)

    def complete(self) -> bool:
        """Whether every part is on disk (caller holds ``lock``)."""
        return all(n == p.size for n, p in zip(self.done, self.parts, strict=True))

    def frontier(self) -> int:
        """Length of the prefix that is entirely on disk (caller holds ``lock``).

        Parts tile the file but are not in offset order once split: the prefix ends where
        the lowest unfinished part stands.
        """
        return min(
            (p.start + n for n, p in zip(self.done, self.parts, strict=True) if n < p.size),
            default=self.size,
        )

    def wait_complete(self, epoch: int, stop: threading.Event) -> bool:
        """Block until every part is on disk; ``False`` if stopped or the epoch ended."""
        with self.lock:
            while not self.complete():
                if stop.is_set() or self.epoch != epoch:
                    return False
                self.changed.wait(0.5)
            return self.epoch == epoch

    def hash_in_order(self, epoch: int, stop: threading.Event, *, follow: bool) -> str | None:
        """sha256 of the partial file in order, once every part is on disk.

        Workers feed the digest the bytes that extend it (:class:`InOrderHash`); this reads
        back the rest from the page cache. With ``follow`` it does so while the parts still
        arrive, as soon as a chunk's worth lies ahead of the digest; without, only once the
        whole file is on disk. ``None`` if stopped, the epoch ended, or nothing is expected.
        """
        with self.lock:
            hasher = self.hasher
            if hasher is None or self.epoch != epoch:
                return None
        while True:
            with self.lock:
                while True:
                    if stop.is_set() or self.epoch != epoch:
                        return None
                    pos = hasher.position
                    complete = self.complete()
                    if complete and pos >= self.size:
                        return hasher.hexdigest()
                    limit = self.frontier() if follow or complete else pos
                    # Wake for whole chunks only: a wakeup per 1 MiB written costs more
                    # in lock traffic and context switches than the hashing saves.
                    if limit - pos >= HASH_CHUNK or (complete and limit > pos):
                        break
                    self.changed.wait(0.5)
                fd = self.fd
            hasher.catch_up(fd, limit, name=str(self.partial))

    def already_in_place(self) -> FileResult | None:
        """The result for a target already on disk with the offered sha256, else ``None``.

        Without a digest nothing proves an existing file is the right one (same-size
        retrains are common), so it is downloaded again. With one, a matching file is the
        right one even if a partial file or a state is still around (a kill after the
        rename that places a file, before its state is deleted): see :meth:`discard_leftovers`.
        """
        expected = self.expected_sha256
        if expected is None:
            return None
        try:
            if self.target.stat().st_size != self.size:
                return None
            with self.target.open("rb") as fh:
                actual = hashlib.file_digest(fh, "sha256").hexdigest()
        except FileNotFoundError:
            return None
        if actual != expected:
            return None
        return FileResult(self.relpath, self.target, self.size, expected, "sha256", skipped=True)

    def discard_leftovers(self) -> None:
        """Delete the partial file, its state, and the state's temp file if a kill left one."""
        remove_state(self.state_file)
        remove_quietly(self.partial)

    def checkpoint(self) -> None:
        """Make the bytes done durable, then record them in the state file."""
        with self.io_lock:
            if self.fd < 0 or self.phase in ("done", "failed"):
                return
            with self.lock:
                state = ResumeState(
                    size=self.size,
                    etag=self.identity.etag,
                    sha256=self.expected_sha256,
                    parts=tuple(self.parts),
                    done=tuple(self.done),
                )
                fd = self.fd
            if not self.identity.ranges or (state.etag is None and state.sha256 is None):
                return  # such a partial can never be resumed; no point in a state file
            if self.needs_sync:
                os.fdatasync(fd)
            save_state(self.state_file, state)

    def finalize(self, epoch: int, actual_sha256: str | None) -> bool:
        """Verify and move the partial file onto the target; ``False`` if the epoch is over.

        On a mismatch the partial and its state are deleted (a retry starts clean) and
        :class:`IntegrityError` names the file.
        """
        with self.io_lock:
            with self.lock:
                if epoch != self.epoch or not self.complete():
                    return False
                fd = self.fd
            size = os.fstat(fd).st_size
            expected = self.expected_sha256
            mismatch: tuple[str, str] | None = None
            if size != self.size:
                mismatch = (f"{self.size} bytes", f"{size} bytes")
            elif expected is not None and actual_sha256 != expected:
                mismatch = (f"sha256 {expected}", f"sha256 {actual_sha256}")
            if mismatch is not None:
                self._discard()
                raise IntegrityError(self.relpath, expected=mismatch[0], actual=mismatch[1])
            if self.needs_sync:
                os.fdatasync(fd)
            self._close_current()
            os.replace(self.partial, self.target)
            remove_state(self.state_file)
            if expected is not None:
                verified = "sha256"
            else:
                verified = "size+etag" if self.identity.etag else "size"
            self.result = FileResult(
                relpath=self.relpath,
                path=self.target,
                size=self.size,
                sha256=actual_sha256,
                verified=verified,
                resumed_bytes=self.resumed_bytes,
                reread_bytes=self.hasher.read_back if self.hasher is not None else 0,
            )
            self.phase = "done"
            return True

    def _discard(self) -> None:
        self.phase = "failed"
        self._close_current()
        self.discard_leftovers()

    def _close_current(self) -> None:
        # Retired descriptors stay open until close(): a stale worker may still hold one,
        # and a reused descriptor number would send its bytes into an unrelated file.
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = -1

    def close(self) -> None:
        """Close the partial file and every retired one (only once no worker runs)."""
        for fd in [self.fd, *self.retired_fds]:
            if fd >= 0:
                os.close(fd)
        self.fd = -1
        self.retired_fds.clear()


def preallocate(fd: int, size: int, relpath: str) -> None:
    """Reserve ``size`` bytes for ``fd``: fallocate, or a sparse ``ftruncate`` if unsupported."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise InsufficientSpace(f"no space left for {relpath} ({size} bytes)") from exc
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        os.ftruncate(fd, size)


def _file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
