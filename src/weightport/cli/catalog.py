"""The catalog as the commands that work on it directly (``keys``, ``finetunes``) open it.

Only ``serve`` creates a data directory. These commands refuse to: run in the wrong folder,
they would otherwise start an empty catalog and report nothing, or "account not found".
Every error they raise names the data directory (or database) they looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from weightport.catalog.db import Catalog
from weightport.config import Settings, load_settings
from weightport.errors import WeightportError

_DATA_DIR_HINT = "pass --data-dir or set WEIGHTPORT_DATA_DIR (weightport serve creates it)"
_DATABASE_HINT = "check --database-url / WEIGHTPORT_DATABASE_URL"


def settings_from(**overrides: Any) -> Settings:
    """Settings with the command's options as explicit arguments (``None``: not given)."""
    return load_settings(overrides)


def catalog_location(settings: Settings) -> str:
    """Where the catalog is, for messages: the data directory, or the database URL sans password."""
    if not settings.database_url:
        return f"data directory {settings.data_dir.resolve()}"
    try:
        return f"database {make_url(settings.database_url).render_as_string(hide_password=True)}"
    except ArgumentError:  # never echo a URL we cannot parse: it may hold a password
        return "the database that --database-url / WEIGHTPORT_DATABASE_URL names"


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (which SQLite would create if missing), else None."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # Catalog.open reports it
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def _database_failure(exc: Exception, where: str) -> click.ClickException:
    """The driver's own first line ("connection refused", "database is locked", a database
    driver that is not installed), and where."""
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
    return click.ClickException(f"catalog in {where}: {reason}")


@contextmanager
def opened_catalog(settings: Settings) -> Iterator[Catalog]:
    """The existing catalog; catalog errors become one line that says where it looked."""
    where = catalog_location(settings)
    sqlite_file = _sqlite_file(settings.effective_database_url)
    if sqlite_file is not None and not sqlite_file.is_file():
        hint = _DATABASE_HINT if settings.database_url else _DATA_DIR_HINT
        raise click.ClickException(f"no weightport catalog in {where}: {hint}")
    with reported(settings):
        catalog = Catalog.open(settings.effective_database_url)
    try:
        with reported(settings):
            yield catalog
    finally:
        catalog.close()


@contextmanager
def reported(settings: Settings) -> Iterator[None]:
    """Catalog errors inside the block become one line that says where the catalog is."""
    where = catalog_location(settings)
    try:
        yield
    except WeightportError as exc:
        raise click.ClickException(f"{exc.message} (in {where})") from None
    except (SQLAlchemyError, ImportError) as exc:
        raise _database_failure(exc, where) from None
