"""The catalog as the commands that work on it directly (``keys``, ``finetunes``) open it.

Only ``serve`` creates a data directory. These commands refuse to: run in the wrong folder,
they would otherwise start an empty catalog and report nothing, or "account not found".
Every error they raise names the data directory (or database) they looked at.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from weightport.catalog.db import Catalog
from weightport.config import CATALOG_FILE_NAME, Settings, load_settings
from weightport.errors import WeightportError

_WHERE_HINT = "pass --data-dir or set WEIGHTPORT_DATA_DIR (weightport serve creates it)"


def settings_from(**overrides: Any) -> Settings:
    """Settings with the command's options as explicit arguments (``None``: not given)."""
    return load_settings(overrides)


def catalog_location(settings: Settings) -> str:
    """Where the catalog is, for messages: the data directory, or the database URL sans password."""
    if settings.database_url:
        return f"database {make_url(settings.database_url).render_as_string(hide_password=True)}"
    return f"data directory {settings.data_dir.resolve()}"


@contextmanager
def opened_catalog(settings: Settings) -> Iterator[Catalog]:
    """The existing catalog; catalog errors become one line that says where it looked."""
    where = catalog_location(settings)
    if not settings.database_url and not (settings.data_dir / CATALOG_FILE_NAME).is_file():
        raise click.ClickException(f"no weightport catalog in {where}: {_WHERE_HINT}")
    try:
        catalog = Catalog.open(settings.effective_database_url)
    except SQLAlchemyError as exc:
        reason = getattr(exc, "orig", None) or exc
        raise click.ClickException(f"cannot open the catalog in {where}: {reason}") from None
    try:
        yield catalog
    except WeightportError as exc:
        raise click.ClickException(f"{exc.message} (in {where})") from None
    finally:
        catalog.close()
