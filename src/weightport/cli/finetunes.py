"""``weightport finetunes``: import fine-tune output from local directories or S3; list jobs.

Runs where the catalog and the store are (like ``keys``): it writes blobs directly. An
``s3://`` checkpoint folder is imported in place: hashed by a streamed read and copied
server-side into the store, never through a local temp file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from weightport.catalog import finetunes
from weightport.catalog.schema import FineTune
from weightport.checkpoint_import import (
    CheckpointSpec,
    register_fine_tune,
    store_files,
    store_folder,
)
from weightport.cli.catalog import opened_catalog, settings_from
from weightport.cli.options import account_option, data_options
from weightport.ingest import directory_files
from weightport.services.archive_builds import archive_builds_of
from weightport.services.together_resources import fine_tune_json
from weightport.storage.base import BlobSource
from weightport.storage.factory import check_store_settings, is_s3_url, open_store, s3_connection
from weightport.storage.s3.folder import S3Folder

#: A checkpoint's files: a local directory, or an S3 folder (``s3://BUCKET/PREFIX``).
Source = Path | str


def _parse_step_dir(value: str, option: str) -> tuple[int, Source]:
    step_text, sep, folder = value.partition("=")
    if not sep or not step_text.isdigit():
        raise click.BadParameter(f"expected STEP=DIR, got {value!r}", param_hint=option)
    if is_s3_url(folder):
        return int(step_text), folder
    path = Path(folder)
    if not path.is_dir():
        raise click.BadParameter(f"{folder} is not a directory", param_hint=option)
    return int(step_text), path


@click.group("finetunes")
def finetunes_group() -> None:
    """Register fine-tunes and inspect them (on the server machine)."""


@finetunes_group.command("import")
@click.option("--base-model", required=True, help="Id of a READY model of the account.")
@account_option()
@click.option("--full", is_flag=True, help="Checkpoints hold full weights (a Full fine-tune).")
@click.option(
    "--checkpoint",
    "intermediate",
    multiple=True,
    metavar="STEP=DIR",
    help="An intermediate checkpoint: a PEFT adapter dir (or HF model dir with --full); "
    "DIR may be s3://BUCKET/PREFIX (imported in place).",
)
@click.option(
    "--final", required=True, metavar="STEP=DIR", help="The final checkpoint (DIR or s3://…)."
)
@click.option("--suffix", default="", help="Suffix of the output model name.")
@click.option("--output-name", default="", help="model_output_name (default owner/base-…).")
@data_options
def import_(
    base_model: str,
    account: str,
    full: bool,
    intermediate: tuple[str, ...],
    final: str,
    suffix: str,
    output_name: str,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Import a fine-tune's checkpoints; prints the new ft- id.

    Every adapter is parsed and checked tensor by tensor against the base model first.
    """
    artifact = finetunes.MODEL if full else finetunes.ADAPTER
    steps = [(*_parse_step_dir(v, "--checkpoint"), finetunes.INTERMEDIATE) for v in intermediate]
    steps.append((*_parse_step_dir(final, "--final"), finetunes.FINAL))
    settings = settings_from(data_dir=data_dir, database_url=database_url)
    check_store_settings(settings)  # a bad storage_url is refused before the catalog is opened
    with opened_catalog(settings) as catalog:
        store = open_store(settings)  # only now: a local store creates its directories

        def stored(source: Source) -> dict[str, BlobSource]:
            if isinstance(source, str):
                return store_folder(store, S3Folder.open(source, s3_connection(settings)))
            return store_files(store, directory_files(source))

        try:
            specs = [
                CheckpointSpec(step, kind, artifact, stored(source)) for step, source, kind in steps
            ]
            ft_id = register_fine_tune(
                catalog,
                store,
                account,
                base_model_id=base_model,
                training_type=finetunes.FULL if full else finetunes.LORA,
                checkpoints=specs,
                model_output_name=output_name,
                suffix=suffix,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from None
    click.echo(ft_id)


def _checkpoints_json(job: FineTune) -> list[dict[str, Any]]:
    """Each checkpoint's step, kind (intermediate/final) and what it holds (adapter/model)."""
    return [
        {
            "step": c.step,
            "kind": c.kind,
            "artifacts": sorted({f.artifact for f in c.files}),
        }
        for c in sorted(job.checkpoints, key=lambda c: c.step)
    ]


@finetunes_group.command("list")
@account_option()
@click.option("--json", "as_json", is_flag=True, help="Print the Together JSON.")
@data_options
def list_(account: str, as_json: bool, data_dir: Path | None, database_url: str | None) -> None:
    """List an account's fine-tunes with their checkpoints and archive builds."""

    def run(session: Session) -> list[dict[str, Any]]:
        return [
            {
                **fine_tune_json(job, archive_builds_of(session, job.id)),
                "weightport_checkpoints": _checkpoints_json(job),
            }
            for job in finetunes.list_fine_tunes(session, account)
        ]

    with opened_catalog(settings_from(data_dir=data_dir, database_url=database_url)) as catalog:
        jobs = catalog.call(run)
    if as_json:
        click.echo(json.dumps(jobs, indent=2))
        return
    for job in jobs:
        kind = job["training_type"]["type"]
        click.echo(f"{job['id']}\t{job['status']}\t{kind}\t{job['model_output_name']}")
        for checkpoint in job["weightport_checkpoints"]:
            holds = "+".join(checkpoint["artifacts"])
            click.echo(f"    step {checkpoint['step']}: {checkpoint['kind']} {holds}")
        for build in job["weightport_archives"]:
            pct = 100 * build["done_bytes"] // max(build["total_bytes"], 1)
            click.echo(
                f"    archive step {build['step']} {build['artifact']}: {build['state']} {pct}%"
            )
