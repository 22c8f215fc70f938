"""Options shared by several commands, defined once: one name and one variable per option.

Client commands (``download``, ``models``) talk HTTP to one server; which one, with which
key and account, is :func:`weightport.client.resolve_api`'s rule (the local server unless
told otherwise). Catalog commands (``keys``, ``finetunes``) open the data directory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from weightport.client.sources import DEFAULT_ACCOUNT, LOCAL_BASE_URL

F = TypeVar("F", bound=Callable[..., Any])

ACCOUNT_ENV = "WEIGHTPORT_ACCOUNT"


def _apply(fn: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):  # the first listed shows first in --help
        fn = option(fn)
    return fn


def data_options(fn: F) -> F:
    """--data-dir and --database-url, which default to WEIGHTPORT_* and the config file."""
    return _apply(
        fn,
        [
            click.option(
                "--data-dir",
                type=click.Path(file_okay=False, path_type=Path),
                default=None,
                help="Data directory [env WEIGHTPORT_DATA_DIR; default ./weightport-data].",
            ),
            click.option(
                "--database-url",
                default=None,
                help="SQLAlchemy URL of the catalog [env WEIGHTPORT_DATABASE_URL; default: "
                "SQLite in the data directory].",
            ),
        ],
    )


def account_option(
    *, default: str | None = DEFAULT_ACCOUNT, what: str = "Account"
) -> Callable[[F], F]:
    """--account for catalog commands, from WEIGHTPORT_ACCOUNT when not given."""
    shown = default or "all accounts"
    return click.option(
        "--account",
        envvar=ACCOUNT_ENV,
        default=default,
        help=f"{what} [env {ACCOUNT_ENV}; default {shown}].",
    )


def client_options(*, account: bool) -> Callable[[F], F]:
    """--base-url, --api-key and (for Fireworks-style paths) --account of a client command.

    They are resolved together by :func:`weightport.client.resolve_api`, so an environment
    key only ever goes to the server of its own family.
    """
    options: list[Callable[[F], F]] = [
        click.option(
            "--base-url",
            default=None,
            help=f"Server [env WEIGHTPORT_BASE_URL; default {LOCAL_BASE_URL}]. A vendor's API "
            "only when asked: e.g. --base-url https://api.fireworks.ai, or the vendor's own "
            "*_BASE_URL variable.",
        ),
        click.option("--api-key", default=None, help="API key [env WEIGHTPORT_API_KEY]."),
    ]
    if account:
        options.append(
            click.option(
                "--account",
                default=None,
                help=f"Account [env {ACCOUNT_ENV}; default {DEFAULT_ACCOUNT}].",
            )
        )
    return lambda fn: _apply(fn, options)
