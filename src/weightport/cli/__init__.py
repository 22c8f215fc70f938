"""The ``weightport`` command: serve, keys, models, finetunes, download."""

from __future__ import annotations

import sys

import click

from weightport import __version__
from weightport.cli.finetunes import finetunes_group
from weightport.cli.keys import keys_group
from weightport.cli.models import models_group
from weightport.cli.serve import serve_command
from weightport.errors import WeightportError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightport")
def cli() -> None:
    """weightport: a self-hosted registry and download gateway for fine-tuned model weights."""


cli.add_command(serve_command)
cli.add_command(keys_group)
cli.add_command(models_group)
cli.add_command(finetunes_group)


def main() -> None:
    """Entry point: clear one-line errors instead of tracebacks."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except WeightportError as exc:
        click.echo(f"Error: {exc.message}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
