"""The ``weightport`` command: serve, keys, models, finetunes, download, audit, gc.

Subcommands are imported when used, so ``weightport download`` never loads the server side
(aiohttp app, Alembic, the merge) it does not need.
"""

from __future__ import annotations

import gc
import importlib
import sys

import click

from weightport import __version__
from weightport.cli.errors import exit_with, failure_of

#: command name -> "module:attribute" of its click command.
COMMANDS = {
    "audit": "weightport.cli.audit:audit_command",
    "serve": "weightport.cli.serve:serve_command",
    "keys": "weightport.cli.keys:keys_group",
    "models": "weightport.cli.models:models_group",
    "finetunes": "weightport.cli.finetunes:finetunes_group",
    "download": "weightport.cli.download:download_group",
    "gc": "weightport.cli.gc:gc_command",
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use (click's documented pattern)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attribute = target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightport")
def cli() -> None:
    """weightport: a self-hosted registry and download gateway for fine-tuned model weights."""


def main() -> None:
    """Entry point: clear one-line errors (:mod:`weightport.cli.errors`), not tracebacks."""
    # What is loaded by now (click, urllib3, the client) stays until the process ends. Out
    # of the collector's sight, it is not walked again by the collections a command
    # triggers nor by the last one at exit: a download's process ended 30-40 ms after its
    # last byte was verified, 15-18 ms with this (BENCHMARKS.md, downloader_link).
    gc.freeze()
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, Exception) as exc:
        failure = failure_of(exc)
        if failure is None:
            raise
        exit_with(failure)
