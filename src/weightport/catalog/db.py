"""Opening the catalog: engines for SQLite and PostgreSQL, migrations, transactions off the loop.

Transactions come in two kinds. A *write* transaction (the default) may read and then write
on what it read, so it must see no concurrent writer in between: on PostgreSQL the catalog
functions lock the rows they change (``SELECT … FOR UPDATE``); on SQLite the transaction
starts with ``BEGIN IMMEDIATE``, taking the database's single write lock up front (a deferred
transaction that read before another process committed could not write at all: SQLite answers
``SQLITE_BUSY_SNAPSHOT`` at once instead of waiting). A *read-only* transaction starts with a
plain ``BEGIN``: in WAL mode it reads one consistent snapshot and never waits for writers, so
the hot read paths of N worker processes never queue behind each other. On PostgreSQL a
read-only transaction is no transaction at all (autocommit): the catalog runs at PostgreSQL's
default READ COMMITTED, where every statement takes its own snapshot even inside a
transaction, so ``BEGIN`` and ``COMMIT`` would cost two round trips and add nothing.

A pooled PostgreSQL connection the database dropped (a restart, a failover, an idle timeout)
is not pinged on every checkout (a round trip per transaction); the transaction that draws it
fails at its first statement, before any of it reached the database, and :meth:`Catalog.call`
runs it once more on a fresh connection.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from weightport.catalog.db_errors import translate
from weightport.catalog.locks import startup_lock
from weightport.errors import Unavailable
from weightport.observability import metrics

T = TypeVar("T")

MIGRATIONS = Path(__file__).with_name("migrations")
_READONLY = "weightport_readonly"
#: Connections each process keeps open to PostgreSQL (and as many more under bursts).
PG_POOL_SIZE = 10


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Autocommit at the driver: pysqlite would otherwise start transactions only before DML,
    # so reads and DDL ran outside them; _sqlite_begin issues BEGIN itself instead.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer; NORMAL is durable across process crashes in WAL.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class _Progress(threading.local):
    """Whether a statement of the transaction this thread runs has reached the database."""

    executed = False


_PROGRESS = _Progress()


def _note_executed(*_args: Any) -> None:
    _PROGRESS.executed = True


def _sqlite_begin(conn: Connection) -> None:
    readonly = conn.get_execution_options().get(_READONLY, False)
    conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")


def database_url(url: str) -> str:
    """``url`` with the driver weightport uses spelled out (``postgresql://`` → psycopg 3)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def make_engine(url: str) -> Engine:
    """An engine for ``url`` (SQLite or PostgreSQL), configured for a server."""
    url = database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        # No pre_ping (a round trip per checkout): Catalog.call retries a transaction whose
        # first statement found its connection dropped, which _note_executed tells apart.
        engine = create_engine(url, pool_size=PG_POOL_SIZE, max_overflow=PG_POOL_SIZE)
    event.listen(engine, "after_cursor_execute", _note_executed)
    return engine


def upsert(session: Session, entity: type[Any]) -> Any:
    """An ``INSERT`` for ``entity`` that can take ``.on_conflict_do_update(...)`` /
    ``.on_conflict_do_nothing()``: SQLite's and PostgreSQL's ``ON CONFLICT`` share one form."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(entity)
    if name == "sqlite":
        return sqlite.insert(entity)
    raise NotImplementedError(f"the catalog supports SQLite and PostgreSQL, not {name}")


def alembic_config(connection: Connection) -> Config:
    """Alembic's configuration for running weightport's migrations on ``connection``."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest migration, in one transaction (idempotent). Callers
    hold the start-up lock (:meth:`Catalog.starting` does)."""
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "head")


def _attempt(sessions: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    _PROGRESS.executed = False
    with sessions.begin() as session:
        return fn(session)


class Catalog:
    """The catalog database: sessions, and a way to use them without blocking the event loop."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        read_options: dict[str, Any] = {_READONLY: True}
        if engine.dialect.name == "postgresql":
            read_options["isolation_level"] = "AUTOCOMMIT"  # see the module's docstring
        self._read_sessions = sessionmaker(
            engine.execution_options(**read_options), expire_on_commit=False
        )

    @classmethod
    def open(cls, url: str, *, upgrade: bool = True) -> Catalog:
        """Open the catalog at ``url``; with ``upgrade``, migrate it first (under the lock)."""
        catalog = cls(make_engine(url))
        if upgrade:
            with catalog.starting():
                pass
        return catalog

    @contextmanager
    def starting(self) -> Iterator[None]:
        """Hold the start-up lock with the schema up to date, for one-time work at start.

        Every process that shares this catalog (replicas on other machines, workers, CLI
        commands) takes the same lock, so migrations, the first admin key and the demo seed
        happen exactly once however many of them start together.
        """
        with startup_lock(self.engine):
            migrate(self.engine)
            yield

    def session(self) -> Session:
        return self._sessions()

    def call(self, fn: Callable[[Session], T], *, readonly: bool = False) -> T:
        """Run ``fn`` in one transaction: commit if it returns, roll back if it raises.

        ``readonly`` promises that ``fn`` only reads; it then never waits for writers.
        Ordinary database conditions (a constraint a concurrent request won, a full disk, a
        busy or unreachable database) leave as the matching
        :class:`~weightport.errors.WeightportError`. A transaction whose first statement
        finds its pooled connection dropped runs once more on a fresh one (``fn`` must not
        call the catalog itself).
        """
        sessions = self._read_sessions if readonly else self._sessions
        try:
            try:
                return _attempt(sessions, fn)
            except DBAPIError as exc:
                if not exc.connection_invalidated or _PROGRESS.executed:
                    raise
                # Nothing of it reached the database; SQLAlchemy has marked every connection
                # the pool held before the drop for replacement.
                return _attempt(sessions, fn)
        except DBAPIError as exc:
            translated = translate(exc)
            metrics.ERRORS.labels("catalog", translated.code if translated else "internal").inc()
            if translated is None:
                raise
            raise translated from exc
        except PoolTimeout as exc:
            raise Unavailable(
                "every catalog database connection of this server is busy; retry shortly"
            ) from exc

    async def run(self, fn: Callable[[Session], T], *, readonly: bool = False) -> T:
        """:meth:`call` in a worker thread, for async code."""
        return await asyncio.to_thread(self.call, fn, readonly=readonly)

    def close(self) -> None:
        self.engine.dispose()
