"""``weightport models``: push a local model directory, list models (over HTTP)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from weightport.cli.errors import reports_failures
from weightport.cli.options import client_options
from weightport.client.push import ModelPusher, PushTarget, describe_files
from weightport.client.sources import resolve_api
from weightport.ingest import directory_files
from weightport.storage.factory import is_s3_url


@click.group("models")
def models_group() -> None:
    """Push and list models on a weightport server."""


@models_group.command("push")
@click.argument("source")
@click.option("--model", "model_id", required=True, help="Model id to create.")
@click.option(
    "--kind",
    default="HF_BASE_MODEL",
    show_default=True,
    type=click.Choice(["HF_BASE_MODEL", "HF_PEFT_ADDON", "CUSTOM_MODEL", "EMBEDDING_MODEL"]),
)
@click.option("--display-name", default="", help="Human-readable name (< 64 characters).")
@click.option("--parallel", default=4, show_default=True, help="Files uploaded at once.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@client_options(account=True)
@reports_failures
def push(
    source: str,
    model_id: str,
    kind: str,
    display_name: str,
    parallel: int,
    quiet: bool,
    base_url: str | None,
    api_key: str | None,
    account: str | None,
) -> None:
    """Upload SOURCE as a new model: create, upload every file, validate → READY.

    SOURCE is a local directory: every file's sha256 is declared before upload and checked
    on the server after validation, so the command succeeds only if the model holds exactly
    these bytes. Re-running after an interruption resumes: files that already landed with
    the same sha256 are skipped, other bytes under their names are replaced. Re-running
    after success succeeds again without uploading.

    SOURCE may also be s3://BUCKET/PREFIX: the server then imports that folder in place
    (hashed and copied inside the object store; the server must list the prefix in its
    s3_import_prefixes).
    """
    api = resolve_api("fireworks", base_url=base_url, api_key=api_key, account=account)
    target = PushTarget(api.base_url, api.api_key, api.account, model_id)
    pusher = ModelPusher(target, parallel=parallel)
    fields: dict[str, Any] = {"kind": kind, "displayName": display_name}
    if is_s3_url(source):
        pusher.ensure_model(fields)
        model = pusher.import_s3(source)
        for warning in pusher.validate():
            click.echo(f"warning: {warning}", err=True)
        click.echo(f"{model.get('name', model_id)} READY (imported from {source})")
        return
    directory = Path(source)
    try:
        files = directory_files(directory)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise click.ClickException(f"{directory} has no files to push")
    total = sum(p.stat().st_size for p in files.values())
    # Reach the server before hashing: a wrong URL or key fails at once, not after an hour.
    pusher.ensure_model(fields)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        disable=quiet,
        transient=False,
    ) as bar:
        hashing = bar.add_task(f"sha256 {model_id}", total=total)
        local = describe_files(files, lambda n: bar.advance(hashing, n), parallel=parallel)
        task = bar.add_task(f"push {model_id}", total=total)
        warnings = pusher.push(local, lambda n: bar.advance(task, n))
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    name = f"accounts/{api.account}/models/{model_id}"
    click.echo(f"{name} READY ({len(files)} files, {total} bytes, sha256 verified)")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON pages.")
@client_options(account=True)
@reports_failures
def list_(as_json: bool, base_url: str | None, api_key: str | None, account: str | None) -> None:
    """List the account's models."""
    api = resolve_api("fireworks", base_url=base_url, api_key=api_key, account=account)
    pusher = ModelPusher(PushTarget(api.base_url, api.api_key, api.account, "-"))
    url = f"{api.base_url}/v1/accounts/{quote(api.account, safe='')}/models?pageSize=200"
    models: list[dict[str, Any]] = []
    token = ""
    while True:
        page = pusher.api("GET", url + (f"&pageToken={quote(token)}" if token else ""))
        models.extend(page.get("models", []))
        token = page.get("nextPageToken", "")
        if not token:
            break
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    for model in models:
        click.echo(f"{model['name']}\t{model['state']}\t{model.get('kind', '')}")
