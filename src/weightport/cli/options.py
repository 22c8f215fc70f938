"""Options shared by the commands that open the local data directory."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from weightport.catalog.db import Catalog
from weightport.config import Settings, load_settings

F = TypeVar("F", bound=Callable[..., Any])


def data_options(fn: F) -> F:
    """--data-dir and --database-url, which default to WEIGHTPORT_* and the config file."""
    fn = click.option(
        "--database-url",
        default=None,
        help="SQLAlchemy URL of the catalog [env WEIGHTPORT_DATABASE_URL; default: SQLite in "
        "the data directory].",
    )(fn)
    fn = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="Data directory [env WEIGHTPORT_DATA_DIR; default ./weightport-data].",
    )(fn)
    return fn


def settings_from(**overrides: Any) -> Settings:
    return load_settings(overrides)


def open_catalog(settings: Settings) -> Catalog:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return Catalog.open(settings.effective_database_url)
