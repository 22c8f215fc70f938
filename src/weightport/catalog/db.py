"""Opening the catalog: engine, SQLite pragmas, migrations, and running work off the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from weightport.catalog.db_errors import translate
from weightport.observability import metrics

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; NORMAL is durable across process crashes in WAL.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), configured for a server."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration (idempotent)."""
    command.upgrade(alembic_config(engine), "head")


class Catalog:
    """The catalog database: sessions, and a way to use them without blocking the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Catalog:
        engine = make_engine(url)
        if upgrade:
            migrate(engine)
        return cls(engine)

    def session(self) -> Session:
        return self._sessions()

    def call(self, fn: Callable[[Session], T]) -> T:
        """Run ``fn`` in one transaction: commit if it returns, roll back if it raises.

        Ordinary database conditions (a constraint a concurrent request won, a full disk, a
        busy database) leave as the matching :class:`~weightport.errors.WeightportError`.
        """
        try:
            with self._sessions.begin() as session:
                return fn(session)
        except DBAPIError as exc:
            translated = translate(exc)
            metrics.ERRORS.labels("catalog", translated.code if translated else "internal").inc()
            if translated is None:
                raise
            raise translated from exc

    async def run(self, fn: Callable[[Session], T]) -> T:
        """:meth:`call` in a worker thread, for async code."""
        return await asyncio.to_thread(self.call, fn)

    def close(self) -> None:
        self.engine.dispose()
