"""``weightport gc``: delete blobs nothing references (or, with --dry-run, list them).

Works on the catalog and the store directly, like ``keys`` and ``finetunes``, on any store
(``storage_url``) and catalog (``database_url``), beside running servers: see
:mod:`weightport.services.gc` for why that is safe.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from weightport.cli.catalog import opened_catalog, settings_from
from weightport.cli.options import data_options
from weightport.services.gc import Collector, GcReport, describe
from weightport.storage.factory import check_store_settings, open_store


def _as_json(report: GcReport) -> str:
    return json.dumps(
        {
            "dry_run": report.dry_run,
            "busy_with": report.busy_with,
            "blobs": report.blobs,
            "blob_bytes": report.blob_bytes,
            "referenced": report.referenced,
            "deleted": [{"sha256": b.key, "size": b.size} for b in report.deleted],
            "deleted_bytes": report.deleted_bytes,
            "waiting": report.waiting,
            "waiting_bytes": report.waiting_bytes,
            "temp_removed": report.temp_removed,
        }
    )


@click.command("gc")
@click.option("--dry-run", is_flag=True, help="Only print what would be deleted.")
@click.option(
    "--grace",
    type=click.IntRange(min=0),
    default=None,
    help="Seconds a blob must have been unreferenced before it is deleted "
    "[env WEIGHTPORT_GC_GRACE; 86400]. A blob is first found unreferenced by a collection: "
    "with a grace above 0, the next collection after that long deletes it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@data_options
def gc_command(
    dry_run: bool,
    grace: int | None,
    as_json: bool,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Delete blobs no model, checkpoint or archive build references."""
    settings = settings_from(data_dir=data_dir, database_url=database_url, gc_grace=grace)
    check_store_settings(settings)
    with opened_catalog(settings) as catalog:
        collector = Collector(
            catalog,
            open_store(settings),
            grace_s=settings.gc_grace,
            temp_max_age_s=settings.staging_max_age,
        )
        report = collector.run(dry_run=dry_run)
    if as_json:
        click.echo(_as_json(report))
        return
    verb = "would delete" if dry_run else "deleted"
    for blob in report.deleted:
        click.echo(f"{verb}  {blob.key}  {blob.size} bytes")
    click.echo(describe(report))
