"""Read-then-write catalog changes wait for each other on both engines, and what one engine
would refuse with a driver error gets the same clear answer everywhere.

Each concurrent test holds one change open in a transaction of its own (as a request on
another replica would) and starts the second from another thread: the second must wait, then
see the first's outcome.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session

from tests.pg_cluster import PostgresCluster
from weightport.catalog import accounts, finetunes, registry, uploads
from weightport.catalog.db import Catalog
from weightport.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

SHA = "0" * 64


@pytest.fixture
def catalog(catalog_url: str) -> Iterator[Catalog]:
    opened = Catalog.open(catalog_url)
    opened.call(lambda s: accounts.create_account(s, "acct"))
    yield opened
    opened.close()


def _ready_model(session: Session, model_id: str, sizes: dict[str, int]) -> None:
    registry.create_model(session, "acct", model_id, {})
    for f in uploads.declare_files(session, "acct", model_id, sizes):
        uploads.land_file(session, "acct", model_id, f.path, f.generation, SHA, f.declared_size)


def _while_open(
    catalog: Catalog, first: Callable[[Session], Any], second: Callable[[Session], Any]
) -> Future[Any]:
    """Run ``first`` in an open transaction; start ``second`` and check that it waits; commit
    ``first``; return ``second``'s outcome."""
    session = catalog.session()
    try:
        with session.begin():
            first(session)
            with ThreadPoolExecutor(1) as pool:
                outcome = pool.submit(catalog.call, second)
                time.sleep(0.5)
                assert not outcome.done(), "the second change did not wait for the first"
                session.commit()
                outcome.exception()  # wait for it
    finally:
        session.close()
    return outcome


def test_validate_waits_for_a_concurrent_redeclaration(catalog: Catalog) -> None:
    catalog.call(lambda s: _ready_model(s, "m", {"a": 1, "b": 2}))
    outcome = _while_open(
        catalog,
        lambda s: uploads.declare_files(s, "acct", "m", {"a": 1, "b": 3}),
        lambda s: uploads.mark_ready(s, "acct", "m"),
    )
    # It saw "b" re-declared and not landed: the model must not turn READY.
    assert isinstance(outcome.exception(), FailedPrecondition)
    model = catalog.call(lambda s: registry.get_model(s, "acct", "m"))
    assert model.state == registry.UPLOADING


def test_a_second_final_checkpoint_waits_and_is_refused(catalog: Catalog) -> None:
    def base(session: Session) -> str:
        _ready_model(session, "base", {"config.json": 2})
        uploads.mark_ready(session, "acct", "base")
        job = finetunes.create_fine_tune(
            session, "acct", base_model_id="base", training_type="Lora", lora_r=8, lora_alpha=16
        )
        return job.id

    ft_id = catalog.call(base)
    ref = [finetunes.FileRef("adapter", "adapter_config.json", 2, SHA)]

    def final(step: int) -> Callable[[Session], Any]:
        return lambda s: finetunes.add_checkpoint(
            s, "acct", ft_id, step=step, kind="final", files=ref
        )

    outcome = _while_open(catalog, final(10), final(20))
    assert isinstance(outcome.exception(), AlreadyExists)
    job = catalog.call(lambda s: finetunes.get_fine_tune(s, "acct", ft_id))
    assert [(c.step, c.kind) for c in job.checkpoints] == [(10, "final")]


def test_values_postgresql_cannot_hold_get_the_same_answer_on_every_engine(
    catalog: Catalog,
) -> None:
    refused: list[Callable[[Session], Any]] = [
        lambda s: registry.create_model(s, "acct", "m", {"displayName": "a\x00b"}),
        lambda s: registry.create_model(s, "acct", "m", {"description": "\x00"}),
        lambda s: registry.list_models(s, "acct", filter_text='displayName = "a\x00"'),
        lambda s: accounts.create_key(s, "acct", "k" * 256),
        lambda s: accounts.create_key(s, "acct", "a\x00"),
    ]
    for change in refused:
        with pytest.raises(InvalidArgument):
            catalog.call(change)
    with pytest.raises(NotFound):
        catalog.call(lambda s: registry.get_model(s, "acct", "a\x00b"))
    catalog.call(lambda s: _ready_model(s, "base", {"config.json": 2}))
    catalog.call(lambda s: uploads.mark_ready(s, "acct", "base"))
    with pytest.raises(InvalidArgument, match="at most 512"):
        catalog.call(
            lambda s: finetunes.create_fine_tune(
                s, "acct", base_model_id="base", training_type="Full", model_output_name="a" * 513
            )
        )


def _backend_pid(session: Session) -> int:
    return int(session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar() or 0)


def _drop_connections(postgres: PostgresCluster, database: str) -> None:
    """Terminate every session of ``database``, waiting until each is gone (a restart)."""
    with psycopg.connect(postgres.dsn(), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )


def test_connections_the_database_dropped_are_replaced_without_failing_a_call(
    postgres: PostgresCluster,
) -> None:
    url = postgres.create_database()
    database = url.rsplit("/", 1)[1]
    catalog = Catalog.open(url)
    try:
        # Several pooled connections, as a busy server holds.
        with ThreadPoolExecutor(4) as pool:
            pids = set(pool.map(lambda _: catalog.call(_slow_pid, readonly=True), range(4)))
        assert len(pids) > 1
        _drop_connections(postgres, database)
        assert catalog.call(_backend_pid, readonly=True) not in pids
        _drop_connections(postgres, database)

        # A write drawing a dead connection is run again too: nothing of it had reached the
        # database, so it happens exactly once.
        def create(session: Session) -> None:
            accounts.create_account(session, "after-restart")
            accounts.create_key(session, "after-restart")

        catalog.call(create)
        assert len(catalog.call(lambda s: accounts.list_keys(s, "after-restart"))) == 1
    finally:
        catalog.close()


def _slow_pid(session: Session) -> int:
    session.connection().exec_driver_sql("SELECT pg_sleep(0.2)")
    return _backend_pid(session)


def test_postgresql_reads_take_no_transaction_and_writes_one(postgres: PostgresCluster) -> None:
    catalog = Catalog.open(postgres.create_database())
    try:

        def two_clocks(session: Session) -> tuple[Any, Any]:
            conn = session.connection()
            first = conn.exec_driver_sql("SELECT now()").scalar()
            conn.exec_driver_sql("SELECT pg_sleep(0.01)")
            return first, conn.exec_driver_sql("SELECT now()").scalar()

        # now() is the start of the statement's transaction.
        first, second = catalog.call(two_clocks, readonly=True)
        assert second > first
        first, second = catalog.call(two_clocks)
        assert second == first
    finally:
        catalog.close()


def test_an_unreachable_database_is_503_not_a_traceback(postgres: PostgresCluster) -> None:
    url = postgres.create_database()
    catalog = Catalog.open(url)
    try:
        # A connection dropped under a transaction (a failover, an admin's kill).
        def killed(session: Session) -> None:
            pid = session.connection().exec_driver_sql("SELECT pg_backend_pid()").scalar()
            with catalog.engine.connect() as other:
                other.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid or 0)})")
            session.connection().exec_driver_sql("SELECT 1")

        with pytest.raises(Unavailable, match="unreachable"):
            catalog.call(killed)
        # The pool replaces the dead connection: the next call works.
        assert catalog.call(lambda s: s.connection().exec_driver_sql("SELECT 1").scalar()) == 1
    finally:
        catalog.close()
    nobody = Catalog.open(
        url.replace(f":{postgres.port}/", f":{postgres.port + 1}/"), upgrade=False
    )
    try:
        with pytest.raises(Unavailable, match="unreachable"):
            nobody.call(lambda s: registry.list_models(s, "acct"))
    finally:
        nobody.close()
