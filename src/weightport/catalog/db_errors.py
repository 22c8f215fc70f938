"""Database failures in the error tree: classified by the driver's codes, never by message.

SQLite (Python 3.11's ``sqlite3``) names each failure in ``sqlite_errorname`` (extended result
codes such as ``SQLITE_CONSTRAINT_UNIQUE``); psycopg gives the SQLSTATE in ``sqlstate``. Both
are stable identifiers, so translating them is not string matching on prose.

Callers that know what a violation means (creating a model whose id was just taken) catch
``IntegrityError`` themselves and raise a precise error; :func:`translate` is the fallback
:meth:`~weightport.catalog.db.Catalog.call` applies to everything else.
"""

from __future__ import annotations

from enum import Enum

import psycopg
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from weightport.errors import (
    Aborted,
    FailedPrecondition,
    InsufficientStorage,
    InvalidArgument,
    Unavailable,
    WeightportError,
)


class Violation(Enum):
    """Which kind of constraint an ``IntegrityError`` broke."""

    UNIQUE = "unique"
    FOREIGN_KEY = "foreign_key"
    OTHER = "other"


_SQLITE_UNIQUE = frozenset({"SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"})
# SQLite reports an ON DELETE RESTRICT refusal as CONSTRAINT_TRIGGER (checked: deleting a
# referenced row); the catalog defines no triggers of its own, so nothing else raises it.
_SQLITE_FOREIGN_KEY = frozenset({"SQLITE_CONSTRAINT_FOREIGNKEY", "SQLITE_CONSTRAINT_TRIGGER"})
_SQLITE_FULL = frozenset({"SQLITE_FULL", "SQLITE_IOERR_WRITE", "SQLITE_IOERR_FSYNC"})
_SQLITE_BUSY = frozenset({"SQLITE_BUSY", "SQLITE_BUSY_SNAPSHOT", "SQLITE_LOCKED"})
# PostgreSQL SQLSTATEs: unique_violation, foreign_key_violation, disk_full, and the
# serialization / deadlock / lock-timeout family a retry resolves.
_PG_UNIQUE, _PG_FOREIGN_KEY, _PG_DISK_FULL = "23505", "23503", "53100"
_PG_RETRY = frozenset({"40001", "40P01", "55P03"})
# The server going away or refusing connections: admin/crash shutdown, starting up, too
# many connections, a statement cancelled by statement_timeout. Class 08 is the
# connection-exception class.
_PG_UNREACHABLE = frozenset({"57P01", "57P02", "57P03", "53300", "57014"})
_SQLITE_UNREADABLE = frozenset({"SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_IOERR_READ"})


def _codes(exc: DBAPIError) -> tuple[str, str]:
    """(SQLite extended error name, PostgreSQL SQLSTATE); empty when the driver gives none."""
    orig = exc.orig
    sqlite_name = getattr(orig, "sqlite_errorname", None) or ""
    sqlstate = getattr(orig, "sqlstate", None) or ""
    return str(sqlite_name), str(sqlstate)


def violation(exc: IntegrityError) -> Violation:
    """The kind of constraint ``exc`` reports."""
    sqlite_name, sqlstate = _codes(exc)
    if sqlite_name in _SQLITE_UNIQUE or sqlstate == _PG_UNIQUE:
        return Violation.UNIQUE
    if sqlite_name in _SQLITE_FOREIGN_KEY or sqlstate == _PG_FOREIGN_KEY:
        return Violation.FOREIGN_KEY
    return Violation.OTHER


def is_disk_full(exc: DBAPIError) -> bool:
    """Whether the database could not write because its disk is full."""
    sqlite_name, sqlstate = _codes(exc)
    return sqlite_name in _SQLITE_FULL or sqlstate == _PG_DISK_FULL


def translate(exc: DBAPIError) -> WeightportError | None:
    """The caller-facing error for a database failure, or ``None`` if it is a real bug."""
    if isinstance(exc, IntegrityError):
        kind = violation(exc)
        if kind is Violation.UNIQUE:
            return Aborted("a concurrent request changed the same resource first; retry")
        if kind is Violation.FOREIGN_KEY:
            return FailedPrecondition(
                "a resource this request refers to (or that refers to it) was changed by a "
                "concurrent request; check it and retry"
            )
        return None
    if is_disk_full(exc):
        return InsufficientStorage(
            "the catalog database cannot be written: its disk is full; nothing was changed"
        )
    sqlite_name, sqlstate = _codes(exc)
    if sqlite_name in _SQLITE_BUSY or sqlstate in _PG_RETRY:
        return Unavailable("the catalog database is busy; retry shortly")
    if is_unreachable(exc):
        return Unavailable(
            "the catalog database is unreachable (connection refused or lost); retry shortly"
        )
    if isinstance(exc, DataError):
        # Values are checked before they reach the database; this is the backstop for a
        # value one engine takes and the other refuses (PostgreSQL text cannot hold NUL).
        return InvalidArgument("a value in this request cannot be stored in the catalog")
    return None


def is_unreachable(exc: DBAPIError) -> bool:
    """Whether ``exc`` says the database cannot be reached (rather than refusing a statement).

    SQLAlchemy marks errors its dialect recognises as a dropped connection
    (``connection_invalidated``); a psycopg ``OperationalError`` with no SQLSTATE is one the
    client raised itself (connection refused, server closed the connection).
    """
    if exc.connection_invalidated:
        return True
    sqlite_name, sqlstate = _codes(exc)
    if sqlstate.startswith("08") or sqlstate in _PG_UNREACHABLE:
        return True
    if sqlite_name in _SQLITE_UNREADABLE:
        return True
    return isinstance(exc.orig, psycopg.OperationalError) and not sqlstate
