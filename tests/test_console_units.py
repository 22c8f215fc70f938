"""Console pieces on their own: catalog sessions, command rendering, size formatting."""

from __future__ import annotations

import shlex
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from weightport.catalog import accounts, sessions
from weightport.catalog.db import Catalog
from weightport.catalog.schema import ConsoleSession, utcnow
from weightport.client.sources import DEFAULT_ACCOUNT
from weightport.errors import Unauthenticated
from weightport.server.console.commands import (
    FINETUNE_COMMANDS,
    MODEL_COMMANDS,
    finetune_commands,
    model_commands,
)
from weightport.server.console.render import human_size


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    opened = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    opened.call(lambda s: accounts.create_account(s, "acct"))
    yield opened
    opened.close()


def test_a_session_lives_until_it_ends(catalog: Catalog) -> None:
    issued = catalog.call(lambda s: accounts.create_key(s, "acct"))
    started = catalog.call(lambda s: sessions.start(s, issued.secret, 60))
    assert started.token != issued.secret and issued.secret not in started.token
    who = catalog.call(lambda s: sessions.resolve(s, started.token))
    assert who is not None and (who.account_id, who.key_id) == ("acct", issued.id)
    stored = catalog.call(lambda s: s.scalars(select(ConsoleSession.token_sha256)).all())
    assert started.token not in stored  # only its digest is kept
    catalog.call(lambda s: sessions.end(s, started.token))
    assert catalog.call(lambda s: sessions.resolve(s, started.token)) is None
    assert catalog.call(lambda s: sessions.resolve(s, "")) is None


def test_expired_and_revoked_sessions_are_refused(catalog: Catalog) -> None:
    issued = catalog.call(lambda s: accounts.create_key(s, "acct"))
    old = catalog.call(lambda s: sessions.start(s, issued.secret, 60))
    live = catalog.call(lambda s: sessions.start(s, issued.secret, 60))

    def backdate(s: Session) -> None:
        for row in s.scalars(select(ConsoleSession)):
            if row.token_sha256 == sessions._digest(old.token):
                row.expires_at = utcnow() - timedelta(seconds=1)

    catalog.call(backdate)
    assert catalog.call(lambda s: sessions.resolve(s, old.token)) is None
    assert catalog.call(lambda s: sessions.resolve(s, live.token)) is not None
    # Starting another session sweeps the expired one.
    catalog.call(lambda s: sessions.start(s, issued.secret, 60))
    assert catalog.call(lambda s: len(s.scalars(select(ConsoleSession)).all())) == 2
    catalog.call(lambda s: accounts.revoke_key(s, issued.id))
    assert catalog.call(lambda s: sessions.resolve(s, live.token)) is None
    with pytest.raises(Unauthenticated):
        catalog.call(lambda s: sessions.start(s, issued.secret, 60))


def test_command_values_are_shell_quoted() -> None:
    tricky = "http://h:1/a b'$(touch x)"
    weightport_cmd, fireworks_cmd, curl_cmd = model_commands(tricky, "acct", "m")
    assert [weightport_cmd.id, fireworks_cmd.id, curl_cmd.id] == [t.id for t in MODEL_COMMANDS]
    assert shlex.split(weightport_cmd.text) == [
        *("weightport", "download", "model", "acct/m", "-o", "m", "--base-url", tricky)
    ]
    assert f"FIREWORKS_BASE_URL={shlex.quote(tricky)} " in fireworks_cmd.text
    endpoint = f"{tricky}/v1/accounts/acct/models/m:getDownloadEndpoint"
    assert f"  {shlex.quote(endpoint)} \\\n" in curl_cmd.text


def test_fine_tune_commands_name_each_client_s_checkpoint() -> None:
    full = finetune_commands(
        "http://h", "ft-1:20", "model_output_path", "out.tar.zst", id_prefix="x-"
    )
    assert [c.id for c in full] == [f"x-{t.id}" for t in FINETUNE_COMMANDS]
    weightport_cmd, together_cmd = (shlex.split(c.text) for c in full)
    assert weightport_cmd[3:7] == ["ft-1:20", "-c", "model_output_path", "-o"]
    # The Together CLI refuses merged/adapter for Full jobs and calls their output "default".
    assert together_cmd[-5:] == ["ft-1:20", "-c", "default", "-o", "out.tar.zst"]
    assert "TOGETHER_API_KEY=$WEIGHTPORT_API_KEY" in together_cmd


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (None, "—"),
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 kB"),
        (1234567, "1.23 MB"),
        (10**15 * 1234, "1,234 PB"),
    ],
)
def test_human_size(size: int | None, shown: str) -> None:
    assert human_size(size) == shown


def test_the_console_admin_is_the_account_the_first_start_creates() -> None:
    # `serve` bootstraps the client's default account; the console lets that account manage keys.
    assert accounts.ADMIN_ACCOUNT == DEFAULT_ACCOUNT
