"""Direct uploads into an object store: where a declared file waits, and how it becomes a blob.

With a store that presigns (S3), ``getUploadEndpoint`` hands out a presigned PUT to a
*staging name* derived from the model's incarnation, the file's path and its upload
generation — deterministic, so no catalog column is needed, and different for a re-declared
file or a re-created model, so a stale URL can never fill a newer declaration.
``validateUpload`` then hashes what arrived by a streamed read in the store and lands the file
under its sha256: no model is READY whose bytes were not hashed.

Hashing takes about a second per GB, longer than a client waits for one answer, so it runs on
worker threads: ``validateUpload`` waits a little and otherwise answers FAILED_PRECONDITION
with ``Retry-After``, and callers poll (as Fireworks' documented upload loop does). The work
is keyed by staging name, so polling never starts a second hash of the same object.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from weightport.catalog import registry, uploads
from weightport.catalog.db import Catalog
from weightport.errors import FailedPrecondition, InvalidArgument, StillWorking
from weightport.services.gc import pin_stored
from weightport.storage.base import BlobInfo, BlobStore, StagedUploads

#: Files hashed at once per process.
HASH_WORKERS = 2


def staging_name(
    account: str, model_id: str, created_at: datetime, path: str, generation: int
) -> str:
    """The staging name of one declared file of one model incarnation."""
    text = json.dumps([account, model_id, created_at.isoformat(), path, generation])
    return "uploads/" + hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class StagedFile:
    """A declared file expected under a staging name (and its declared sha256, if any)."""

    path: str
    generation: int
    declared_size: int
    name: str
    expected_sha256: str | None = None


class StagedLanding:
    """Hashes staged objects into blobs on worker threads, one job per staging name."""

    def __init__(self, workers: int = HASH_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="staged-hash")
        self._jobs: dict[str, Future[BlobInfo]] = {}
        self._lock = threading.Lock()

    def start(self, store: StagedUploads, file: StagedFile) -> Future[BlobInfo]:
        """The hashing of ``file`` (started now unless it already runs)."""
        with self._lock:
            job = self._jobs.get(file.name)
            if job is None:
                job = self._pool.submit(
                    store.commit_staged, file.name, expected_size=file.declared_size
                )
                self._jobs[file.name] = job
            return job

    def collect(self, name: str) -> None:
        """Forget a finished job once its outcome has been used (a failed one is then
        tried again by the next call; a result lost to a restart is simply recomputed,
        because the staged object stays until the file has landed)."""
        with self._lock:
            job = self._jobs.get(name)
            if job is not None and job.done():
                del self._jobs[name]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


#: How long one validateUpload waits for hashing before telling the caller to poll.
VERIFY_WAIT_S = 20.0
#: What that answer suggests (``Retry-After``), seconds.
POLL_AFTER_S = 2


def _pending(account: str, model_id: str) -> Callable[[Session], list[StagedFile]]:
    def run(session: Session) -> list[StagedFile]:
        model = registry.get_model(session, account, model_id)
        if model.state != registry.UPLOADING:
            return []
        return [
            StagedFile(
                f.path,
                f.generation,
                f.declared_size,
                staging_name(account, model_id, model.created_at, f.path, f.generation),
                f.expected_sha256,
            )
            for f in model.files
            if f.sha256 is None
        ]

    return run


class StagingStore(BlobStore, StagedUploads, Protocol):
    """A store that takes direct uploads under staging names."""


def _land(
    store: BlobStore, account: str, model_id: str, file: StagedFile, info: BlobInfo
) -> Callable[[Session], None]:
    def run(session: Session) -> None:
        # Its bytes may equal a blob garbage collection is deleting this instant.
        pin_stored(session, store, [info.key])
        uploads.land_file(
            session, account, model_id, file.path, file.generation, info.key, info.size
        )

    return run


async def land_staged(
    catalog: Catalog,
    store: StagingStore,
    landing: StagedLanding,
    account: str,
    model_id: str,
    *,
    wait_s: float = VERIFY_WAIT_S,
) -> None:
    """Hash and land every declared file whose bytes arrived under its staging name.

    Files with nothing staged are left alone (``require_complete`` names them). Raises
    :class:`FailedPrecondition` for an object of the wrong size (it is removed: upload it
    again) and :class:`StillWorking` while hashing goes on past ``wait_s``.
    """
    files = await catalog.run(_pending(account, model_id))
    sizes = await asyncio.gather(*(asyncio.to_thread(store.staged_size, f.name) for f in files))
    arrived = [f for f, size in zip(files, sizes, strict=True) if size is not None]
    if not arrived:
        return
    jobs = [landing.start(store, f) for f in arrived]
    await asyncio.wait([asyncio.wrap_future(job) for job in jobs], timeout=wait_s)
    for file, job in zip(arrived, jobs, strict=True):
        if not job.done():
            continue
        landing.collect(file.name)
        try:
            info = job.result()
        except InvalidArgument as exc:
            raise FailedPrecondition(f"{file.path!r}: {exc.message}") from None
        try:
            await catalog.run(_land(store, account, model_id, file, info))
        except FailedPrecondition:
            # Other bytes than declared (or a stale declaration): drop them, so the caller
            # uploads again rather than having them hashed at every poll.
            await asyncio.to_thread(store.discard_staged, file.name)
            raise
        await asyncio.to_thread(store.discard_staged, file.name)
    busy = [f for f, job in zip(arrived, jobs, strict=True) if not job.done()]
    if busy:
        total = sum(f.declared_size for f in busy)
        raise StillWorking(
            f"verifying {len(busy)} uploaded file(s) ({total} bytes): hashing runs; "
            "call validateUpload again",
            retry_after=POLL_AFTER_S,
        )
