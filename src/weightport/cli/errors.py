"""The one path from an error to what a user sees: one line on stderr and an exit status.

Exit statuses: 0 done, 1 failed, 2 unusable arguments (like click's own usage errors),
130 interrupted. Commands with ``--json`` also print ``{"error": {"type", "message"}}`` on
stdout. Errors that are not listed in :func:`failure_of` are bugs and keep their traceback.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn, ParamSpec, TypeVar

import click

from weightport.client.errors import ConfigurationError, DownloadError
from weightport.errors import WeightportError

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True)
class Failure:
    """What a user is told: the message, the error's kind (for ``--json``), the exit status."""

    message: str
    kind: str
    status: int


def failure_of(exc: BaseException) -> Failure | None:
    """The one-line report of ``exc``, or ``None`` when it is a bug rather than a failure."""
    kind = type(exc).__name__
    if isinstance(exc, KeyboardInterrupt):
        return Failure("interrupted; run the same command again to resume", "Interrupted", 130)
    if isinstance(exc, ConfigurationError):
        return Failure(str(exc), kind, 2)
    if isinstance(exc, DownloadError):
        return Failure(str(exc), kind, 1)
    if isinstance(exc, WeightportError):
        return Failure(exc.message, kind, 1)
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        return Failure(f"{where}{exc.strerror or exc}", kind, 1)
    return None


def exit_with(failure: Failure, *, as_json: bool = False) -> NoReturn:
    """Print ``failure`` (also as JSON on stdout when asked) and exit with its status."""
    if as_json:
        click.echo(json.dumps({"error": {"type": failure.kind, "message": failure.message}}))
    click.echo(f"Error: {failure.message}", err=True)
    # SystemExit, not click's Exit: it must survive click's standalone_mode=False.
    raise SystemExit(failure.status)


def reports_failures(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorate a command so that its failures end as :func:`exit_with`, never a traceback.

    Needed on the client commands because they also run outside :func:`weightport.cli.main`
    (``python -m weightport.cli.download``) and because ``--json`` shapes the report.
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except (KeyboardInterrupt, Exception) as exc:
            failure = failure_of(exc)
            if failure is None:
                raise
            exit_with(failure, as_json=bool(kwargs.get("as_json")))

    return wrapper
