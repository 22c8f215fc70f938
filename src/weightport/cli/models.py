"""``weightport models``: push a local model directory, list models (over HTTP)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from weightport.client.errors import DownloadError
from weightport.client.push import ModelPusher, PushTarget
from weightport.ingest import directory_files

DEFAULT_BASE_URL = "http://127.0.0.1:8700"


def _env(*names: str) -> str | None:
    return next((os.environ[n] for n in names if os.environ.get(n)), None)


def _target_options(fn: Any) -> Any:
    fn = click.option(
        "--account",
        default=None,
        help="Account [env WEIGHTPORT_ACCOUNT, FIREWORKS_ACCOUNT_ID; default admin].",
    )(fn)
    fn = click.option(
        "--api-key", default=None, help="API key [env WEIGHTPORT_API_KEY, FIREWORKS_API_KEY]."
    )(fn)
    fn = click.option(
        "--base-url",
        default=None,
        help=f"Server [env WEIGHTPORT_BASE_URL, FIREWORKS_BASE_URL; default {DEFAULT_BASE_URL}].",
    )(fn)
    return fn


def _resolve(
    base_url: str | None, api_key: str | None, account: str | None
) -> tuple[str, str, str]:
    base = base_url or _env("WEIGHTPORT_BASE_URL", "FIREWORKS_BASE_URL") or DEFAULT_BASE_URL
    key = api_key or _env("WEIGHTPORT_API_KEY", "FIREWORKS_API_KEY")
    if not key:
        raise click.UsageError("an API key is required: --api-key or WEIGHTPORT_API_KEY")
    acct = account or _env("WEIGHTPORT_ACCOUNT", "FIREWORKS_ACCOUNT_ID") or "admin"
    return base, key, acct


@click.group("models")
def models_group() -> None:
    """Push and list models on a weightport server."""


@models_group.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
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
@_target_options
def push(
    directory: Path,
    model_id: str,
    kind: str,
    display_name: str,
    parallel: int,
    quiet: bool,
    base_url: str | None,
    api_key: str | None,
    account: str | None,
) -> None:
    """Upload DIRECTORY as a new model: create, upload every file, validate → READY.

    Re-running after an interruption resumes: files that already landed are skipped.
    """
    base, key, acct = _resolve(base_url, api_key, account)
    try:
        files = directory_files(directory)
    except (ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from None
    if not files:
        raise click.ClickException(f"{directory} has no files to push")
    pusher = ModelPusher(PushTarget(base, key, acct, model_id), parallel=parallel)
    total = sum(p.stat().st_size for p in files.values())
    fields: dict[str, Any] = {"kind": kind, "displayName": display_name}
    try:
        pusher.ensure_model(fields)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            disable=quiet,
            transient=False,
        ) as bar:
            task = bar.add_task(f"push {model_id}", total=total)
            pusher.upload_files(files, lambda n: bar.advance(task, n))
        warnings = pusher.validate()
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    for warning in warnings:
        click.echo(f"warning: {warning}", err=True)
    click.echo(f"accounts/{acct}/models/{model_id} READY ({len(files)} files, {total} bytes)")


@models_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON pages.")
@_target_options
def list_(as_json: bool, base_url: str | None, api_key: str | None, account: str | None) -> None:
    """List the account's models."""
    base, key, acct = _resolve(base_url, api_key, account)
    pusher = ModelPusher(PushTarget(base, key, acct, "-"))
    url = f"{base.rstrip('/')}/v1/accounts/{acct}/models?pageSize=200"
    models: list[dict[str, Any]] = []
    token = ""
    try:
        while True:
            page = pusher.api("GET", url + (f"&pageToken={token}" if token else ""))
            models.extend(page.get("models", []))
            token = page.get("nextPageToken", "")
            if not token:
                break
    except DownloadError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps(models, indent=2))
        return
    for model in models:
        click.echo(f"{model['name']}\t{model['state']}\t{model.get('kind', '')}")
