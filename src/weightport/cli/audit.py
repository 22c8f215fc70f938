"""``weightport audit``: who downloaded what, read from the catalog (server admin only)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from sqlalchemy.orm import Session

from weightport.catalog import audit
from weightport.cli.catalog import opened_catalog, settings_from
from weightport.cli.options import account_option, data_options
from weightport.errors import InvalidArgument

SPAN_HELP = "an ISO time (2026-11-28T10:00Z) or a span before now (90m, 24h, 7d)"


def _time_option(value: str | None, name: str, now: datetime) -> datetime | None:
    if not value:
        return None
    try:
        return audit.parse_time(value, now, name=name)
    except InvalidArgument as exc:
        raise click.BadParameter(exc.message, param_hint=name) from None


def _what(record: dict[str, Any]) -> str:
    what = str(record["resource"])
    if record["revision"]:
        what += f"@{record['revision']}"
    if record["kind"] != "file":
        what += f" {record['kind']}"
    return what + f" {record['file'] or '(all files)'}"


@click.command("audit")
@account_option(default=None, what="Only this account's downloads")
@click.option("--key-id", default=None, help="Only downloads with this API key (its id).")
@click.option(
    "--action",
    type=click.Choice(audit.ACTIONS),
    default=None,
    help="download: bytes served; urls: signed URLs handed out [default: both].",
)
@click.option("--since", default=None, help=f"Only records active since {SPAN_HELP}.")
@click.option("--until", default=None, help=f"Only records begun before {SPAN_HELP}.")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=audit.MAX_PAGE_SIZE),
    default=100,
    show_default=True,
    help="Most records shown, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@data_options
def audit_command(
    account: str | None,
    key_id: str | None,
    action: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    as_json: bool,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Show the download audit log: who (account, key, client) downloaded what, when, and
    how many bytes; newest first. One record per download, however many ranges it took."""
    now = datetime.now(UTC)
    query = audit.AuditQuery(
        account_id=account,
        key_id=key_id,
        action=action,
        since=_time_option(since, "--since", now),
        until=_time_option(until, "--until", now),
    )

    def run(session: Session) -> tuple[list[dict[str, Any]], int]:
        page = audit.list_records(session, query, page_size=limit)
        return [audit.record_json(r) for r in page.records], page.total_size

    with opened_catalog(settings_from(data_dir=data_dir, database_url=database_url)) as catalog:
        records, total = catalog.call(run)
    if as_json:
        click.echo(json.dumps({"auditRecords": records, "totalSize": total}, indent=2))
        return
    click.echo("FIRST\tLAST\tACCOUNT\tKEY\tACTION\tWHAT\tBYTES\tREQUESTS\tCLIENT\tUSER AGENT")
    for r in records:
        click.echo(
            f"{r['firstTime']}\t{r['lastTime']}\t{r['account']}\t{r['keyId']}\t{r['action']}\t"
            f"{_what(r)}\t{r['bytes']}\t{r['requests']}\t{r['client']}\t{r['userAgent']}"
        )
    if total > len(records):
        click.echo(f"({len(records)} of {total} shown; --limit or --since for others)", err=True)
