"""The start-up lock: one process at a time migrates and seeds a shared catalog.

On PostgreSQL it is a session-level advisory lock (``pg_advisory_lock``) held on a connection
of its own, so it covers replicas on any number of machines and is released by the server if
the holder dies. On SQLite, which only processes on the same machine can share, it is an
exclusive ``flock`` on a file beside the database, likewise released when its holder dies.
"""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, text

STARTUP = "weightport:startup"


def advisory_key(name: str) -> int:
    """The signed 64-bit key PostgreSQL's advisory locks take, derived from ``name``."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


@contextmanager
def startup_lock(engine: Engine) -> Iterator[None]:
    """Hold the catalog's start-up lock (blocking until it is free)."""
    if engine.dialect.name == "postgresql":
        key = advisory_key(STARTUP)
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": key})
        return
    database = engine.url.database
    if engine.dialect.name != "sqlite" or not database or database == ":memory:":
        # An in-memory database lives in one process: there is nobody to exclude.
        yield
        return
    lock_path = Path(database).with_name(Path(database).name + ".startup-lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
