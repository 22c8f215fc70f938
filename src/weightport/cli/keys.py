"""``weightport keys``: API keys, managed directly on the catalog (server admin only)."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.cli.options import data_options, open_catalog, settings_from


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys (run where the catalog is reachable)."""


@keys_group.command("create")
@click.option("--account", default="admin", show_default=True, help="Account the key acts as.")
@click.option("--name", default="", help="A note to recognise the key by.")
@click.option("--create-account", is_flag=True, help="Create the account if it is new.")
@data_options
def create(
    account: str, name: str, create_account: bool, data_dir: Path | None, database_url: str | None
) -> None:
    """Create a key and print it. It is shown only this once."""
    catalog = open_catalog(settings_from(data_dir=data_dir, database_url=database_url))
    try:

        def run(session: Session) -> accounts.IssuedKey:
            if create_account:
                accounts.ensure_account(session, account)
            return accounts.create_key(session, account, name)

        issued = catalog.call(run)
    finally:
        catalog.close()
    click.echo(issued.secret)
    click.echo(f"(key id {issued.id}, account {issued.account_id}; store it now)", err=True)


@keys_group.command("list")
@click.option("--account", default=None, help="Only this account's keys.")
@data_options
def list_(account: str | None, data_dir: Path | None, database_url: str | None) -> None:
    """List keys (ids only: secrets are never stored)."""
    catalog = open_catalog(settings_from(data_dir=data_dir, database_url=database_url))
    try:
        keys = catalog.call(lambda s: accounts.list_keys(s, account))
    finally:
        catalog.close()
    for key in keys:
        state = "revoked" if key.revoked else "active"
        click.echo(f"{key.id}\t{key.account_id}\t{state}\t{key.created_at:%Y-%m-%d}\t{key.name}")


@keys_group.command("revoke")
@click.argument("key_id")
@data_options
def revoke(key_id: str, data_dir: Path | None, database_url: str | None) -> None:
    """Revoke a key by id; requests with it fail from now on."""
    catalog = open_catalog(settings_from(data_dir=data_dir, database_url=database_url))
    try:
        catalog.call(lambda s: accounts.revoke_key(s, key_id))
    finally:
        catalog.close()
    click.echo(f"revoked {key_id}")
