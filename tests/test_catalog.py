"""The catalog on its own: migrations match the schema; registry and fine-tune rules."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.orm import Session

from weightport.catalog import accounts, finetunes, registry, uploads
from weightport.catalog.db import Catalog, alembic_config, make_engine, migrate
from weightport.catalog.schema import Base, ModelFile
from weightport.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    opened.call(lambda s: accounts.create_account(s, "acct"))
    yield opened
    opened.close()


def test_migrations_produce_exactly_the_schema(catalog: Catalog) -> None:
    with catalog.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_upload_epochs_start_past_existing_generations(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'old.sqlite3'}")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), "0002")
    with engine.begin() as connection:
        for statement in (
            "INSERT INTO accounts VALUES ('a', 'a', '2026-01-01 00:00:00')",
            "INSERT INTO models (pk, account_id, model_id, display_name, description, kind, "
            "state, extra, created_at, updated_at) VALUES (1, 'a', 'm', '', '', 'CUSTOM_MODEL', "
            "'UPLOADING', '{}', '2026-01-01 00:00:00', '2026-01-01 00:00:00')",
            "INSERT INTO model_files (model_pk, path, declared_size, generation) "
            "VALUES (1, 'w', 1, 3), (1, 'v', 1, 1)",
        ):
            connection.exec_driver_sql(statement)
    migrate(engine)
    with engine.connect() as connection:
        epoch = connection.exec_driver_sql("SELECT upload_epoch FROM models").scalar_one()
    assert epoch == 3
    engine.dispose()


def test_keys_are_stored_hashed_and_revocable(catalog: Catalog) -> None:
    issued = catalog.call(lambda s: accounts.create_key(s, "acct", "ci"))
    with catalog.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT secret_sha256 FROM api_keys").scalar_one()
    assert issued.secret not in stored and len(stored) == 64
    caller = catalog.call(lambda s: accounts.authenticate(s, issued.secret))
    assert caller == accounts.Caller(account_id="acct", key_id=issued.id)
    assert catalog.call(lambda s: accounts.key_is_active(s, issued.id))
    catalog.call(lambda s: accounts.revoke_key(s, issued.id))
    assert not catalog.call(lambda s: accounts.key_is_active(s, issued.id))
    assert not catalog.call(lambda s: accounts.key_is_active(s, "no-such-key"))
    with pytest.raises(Unauthenticated):
        catalog.call(lambda s: accounts.authenticate(s, issued.secret))


def test_a_download_listing_checks_the_key_in_its_one_statement(catalog: Catalog) -> None:
    def seed(session: Session) -> None:
        accounts.create_account(session, "other")
        for model_id, sizes in (("m", {"b.bin": 2, "a.json": 1}), ("pending", {"x": 1})):
            registry.create_model(session, "acct", model_id, {})
            for f in uploads.declare_files(session, "acct", model_id, sizes):
                if model_id == "m":
                    digest = f.path[0] * 64
                    uploads.land_file(
                        session, "acct", model_id, f.path, f.generation, digest, f.declared_size
                    )
        uploads.mark_ready(session, "acct", "m")

    catalog.call(seed)
    ours = catalog.call(lambda s: accounts.create_key(s, "acct"))
    theirs = catalog.call(lambda s: accounts.create_key(s, "other"))

    def listing(
        secret: str, model_id: str = "m"
    ) -> tuple[accounts.Caller, registry.DownloadableModel]:
        return catalog.call(
            lambda s: registry.get_downloadable_as(s, secret, "acct", model_id), readonly=True
        )

    caller, model = listing(ours.secret)
    assert caller == accounts.Caller("acct", ours.id)
    assert (model.paths, model.sizes, model.sha256s) == (
        ("a.json", "b.bin"),
        (1, 2),
        ("a" * 64, "b" * 64),
    )
    assert model == catalog.call(lambda s: registry.get_downloadable(s, "acct", "m"))
    assert model.file("b.bin") == registry.DownloadableFile("b.bin", 2, "b" * 64)
    assert model.file("c") is None
    # A bad key is refused before anything about the model is told, even a malformed id.
    for bad in ("", "wp_nope_nope", "wp_\u00e9", theirs.secret + "x"):
        for model_id in ("m", "missing", "../m"):
            with pytest.raises(Unauthenticated):
                listing(bad, model_id)
    # Another account's key finds every model of this account missing, existing or not.
    for model_id in ("m", "missing"):
        with pytest.raises(NotFound, match="not found"):
            listing(theirs.secret, model_id)
    for model_id in ("missing", "../m"):
        with pytest.raises(NotFound, match="not found"):
            listing(ours.secret, model_id)
    with pytest.raises(FailedPrecondition, match="validateUpload"):
        listing(ours.secret, "pending")
    catalog.call(lambda s: accounts.revoke_key(s, ours.id))
    with pytest.raises(Unauthenticated):
        listing(ours.secret)


def test_pages_filters_and_order(catalog: Catalog) -> None:
    def seed(session: Session) -> None:
        for i in range(5):
            registry.create_model(session, "acct", f"m{i}", {"displayName": f"M{i % 2}"})

    catalog.call(seed)
    first = catalog.call(lambda s: registry.list_models(s, "acct", page_size=2))
    assert [m.model_id for m in first.models] == ["m0", "m1"]
    assert (first.next_page_token, first.total_size) == ("2", 5)
    last = catalog.call(lambda s: registry.list_models(s, "acct", page_size=2, page_token="4"))
    assert [m.model_id for m in last.models] == ["m4"] and last.next_page_token == ""
    odd = catalog.call(
        lambda s: registry.list_models(
            s, "acct", filter_text='displayName = "M1"', order_by="name desc"
        )
    )
    assert [m.model_id for m in odd.models] == ["m3", "m1"]
    for bad in ({"filter_text": "state ~ x"}, {"order_by": "name sideways"}, {"page_token": "x"}):
        with pytest.raises(InvalidArgument):
            catalog.call(lambda s, bad=bad: registry.list_models(s, "acct", **bad))


def test_redeclaring_keeps_landed_files_and_resets_changed_ones(catalog: Catalog) -> None:
    def run(session: Session) -> dict[str, tuple[str | None, int]]:
        registry.create_model(session, "acct", "m", {})
        files = uploads.declare_files(session, "acct", "m", {"a": 1, "b": 2})
        for f in files:
            uploads.land_file(session, "acct", "m", f.path, f.generation, "0" * 64, f.declared_size)
        again = uploads.declare_files(session, "acct", "m", {"a": 1, "b": 3, "c": 4})
        return {f.path: (f.sha256, f.generation) for f in again}

    state = catalog.call(run)
    # Generations are the model's upload epoch: "c", new in the second declaration, gets 2.
    assert state == {"a": ("0" * 64, 1), "b": (None, 2), "c": (None, 2)}
    with pytest.raises(FailedPrecondition):
        catalog.call(lambda s: uploads.land_file(s, "acct", "m", "b", 1, "1" * 64, 2))
    with pytest.raises(FailedPrecondition):
        catalog.call(lambda s: uploads.mark_ready(s, "acct", "m"))


def test_declared_digests_decide_what_may_land(catalog: Catalog) -> None:
    ours, theirs = "a" * 64, "b" * 64

    def declare(session: Session, digests: dict[str, str] | None) -> dict[str, ModelFile]:
        files = uploads.declare_files(session, "acct", "d", {"w": 4}, digests)
        return {f.path: f for f in files}

    def setup(session: Session) -> int:
        registry.create_model(session, "acct", "d", {})
        (w,) = declare(session, None).values()  # another client, no digest
        uploads.land_file(session, "acct", "d", "w", w.generation, theirs, 4)
        return w.generation

    old_generation = catalog.call(setup)
    w = catalog.call(lambda s: declare(s, {"w": ours})["w"])
    assert (w.sha256, w.expected_sha256) == (None, ours)  # foreign bytes dropped
    assert w.generation > old_generation
    with pytest.raises(FailedPrecondition, match="no longer declared"):
        catalog.call(lambda s: uploads.land_file(s, "acct", "d", "w", old_generation, theirs, 4))
    with pytest.raises(FailedPrecondition, match="was declared"):
        catalog.call(lambda s: uploads.land_file(s, "acct", "d", "w", w.generation, theirs, 4))
    catalog.call(lambda s: uploads.land_file(s, "acct", "d", "w", w.generation, ours, 4))
    again = catalog.call(lambda s: declare(s, {"w": ours})["w"])
    assert (again.sha256, again.generation) == (ours, w.generation)  # unchanged: kept
    # Removed and declared again: a fresh generation, never one an old URL carries.
    catalog.call(lambda s: uploads.declare_files(s, "acct", "d", {"other": 1}))
    readded = catalog.call(lambda s: declare(s, None)["w"])
    assert readded.generation > again.generation
    with pytest.raises(FailedPrecondition, match="not uploaded yet: w"):
        catalog.call(lambda s: uploads.mark_ready(s, "acct", "d"))


def test_fine_tune_rules(catalog: Catalog) -> None:
    def base(session: Session) -> None:
        registry.create_model(session, "acct", "base", {})
        (f,) = uploads.declare_files(session, "acct", "base", {"config.json": 2})
        uploads.land_file(session, "acct", "base", f.path, f.generation, "0" * 64, 2)
        uploads.mark_ready(session, "acct", "base")

    catalog.call(base)
    job = catalog.call(
        lambda s: finetunes.create_fine_tune(
            s, "acct", base_model_id="base", training_type="Lora", lora_r=8, lora_alpha=16
        )
    )
    ref = [finetunes.FileRef("adapter", "adapter_config.json", 2, "0" * 64)]

    def add(step: int, kind: str) -> None:
        catalog.call(
            lambda s: finetunes.add_checkpoint(s, "acct", job.id, step=step, kind=kind, files=ref)
        )

    add(10, "intermediate")
    with pytest.raises(AlreadyExists):
        add(10, "final")
    add(20, "final")
    with pytest.raises(InvalidArgument):
        add(30, "intermediate")  # after the final checkpoint
    done = catalog.call(lambda s: finetunes.get_fine_tune(s, "acct", job.id))
    assert done.status == "completed" and [c.step for c in done.checkpoints] == [10, 20]
    with pytest.raises(NotFound):
        catalog.call(lambda s: finetunes.get_fine_tune(s, "other", job.id))


def test_processes_starting_together_migrate_once(catalog_url: str) -> None:
    # Each process opens the catalog exactly as `weightport serve` does; without the start-up
    # lock they race to create the same tables and the alembic version row.
    script = "import sys; from weightport.catalog.db import Catalog; Catalog.open(sys.argv[1])"
    processes = [
        subprocess.Popen([sys.executable, "-c", script, catalog_url], stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    outcomes = [(p.communicate()[1], p.returncode) for p in processes]
    assert [err.decode() for err, code in outcomes if code != 0] == []
    opened = Catalog.open(catalog_url, upgrade=False)
    try:
        with opened.engine.connect() as connection:
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version").all()
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert len(versions) == 1 and diff == []
    finally:
        opened.close()
