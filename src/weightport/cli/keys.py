"""``weightport keys``: API keys, managed directly on the catalog (server admin only)."""

from __future__ import annotations

from pathlib import Path

import click
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.cli.catalog import opened_catalog, settings_from
from weightport.cli.options import account_option, data_options
from weightport.signing import new_signing_key


@click.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys (run where the catalog is reachable)."""


@keys_group.command("create")
@account_option(what="Account the key acts as")
@click.option("--name", default="", help="A note to recognise the key by.")
@click.option("--create-account", is_flag=True, help="Create the account if it is new.")
@data_options
def create(
    account: str, name: str, create_account: bool, data_dir: Path | None, database_url: str | None
) -> None:
    """Create a key and print it. It is shown only this once."""

    def run(session: Session) -> accounts.IssuedKey:
        if create_account:
            accounts.ensure_account(session, account)
        return accounts.create_key(session, account, name)

    with opened_catalog(settings_from(data_dir=data_dir, database_url=database_url)) as catalog:
        issued = catalog.call(run)
    click.echo(issued.secret)
    click.echo(f"(key id {issued.id}, account {issued.account_id}; store it now)", err=True)


@keys_group.command("list")
@account_option(default=None, what="Only this account's keys")
@data_options
def list_(account: str | None, data_dir: Path | None, database_url: str | None) -> None:
    """List keys (ids only: secrets are never stored)."""
    with opened_catalog(settings_from(data_dir=data_dir, database_url=database_url)) as catalog:
        keys = catalog.call(lambda s: accounts.list_keys(s, account))
    click.echo("ID\tACCOUNT\tSTATE\tCREATED\tNAME")
    for key in keys:
        state = "revoked" if key.revoked else "active"
        click.echo(f"{key.id}\t{key.account_id}\t{state}\t{key.created_at:%Y-%m-%d}\t{key.name}")


@keys_group.command("revoke")
@click.argument("key")
@data_options
def revoke(key: str, data_dir: Path | None, database_url: str | None) -> None:
    """Revoke KEY (the key itself, or its id from `keys list`); it stops working at once."""

    def run(session: Session) -> str:
        key_id = accounts.key_id_of(session, key)
        accounts.revoke_key(session, key_id)
        return key_id

    with opened_catalog(settings_from(data_dir=data_dir, database_url=database_url)) as catalog:
        key_id = catalog.call(run)
    click.echo(f"revoked {key_id}")


@keys_group.command("signing-key")
def signing_key() -> None:
    """Print a new ``kid:secret`` URL-signing key for the ``signing_keys`` setting.

    Give every replica the same list. To rotate, put the new key first and keep the old one
    after it until the URLs it signed have expired (``download_url_ttl``), then drop it.
    """
    click.echo(new_signing_key())
