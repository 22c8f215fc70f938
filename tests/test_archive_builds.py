"""Archive builds are claimed through the catalog: one build however many replicas ask, a
running build left alone, a dead builder's build taken over when its lease expires.

Each builder here is what one replica runs (its own owner name); they share a catalog on
SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from weightport import demo
from weightport.archive import ArchivePlan
from weightport.catalog import accounts, finetunes
from weightport.catalog.db import Catalog
from weightport.catalog.schema import ArchiveBuild, FineTune, utcnow
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.config import Settings
from weightport.ingest import register_model
from weightport.services.archive_builds import (
    MAX_ATTEMPTS,
    ArchiveBuilder,
    BuildLost,
    BuildState,
    BuildTarget,
)
from weightport.services.finetune_archives import PlanCache, select_artifact
from weightport.storage.base import BlobStore
from weightport.storage.factory import open_store


@dataclass
class Fixture:
    catalog: Catalog
    store: BlobStore
    plan: ArchivePlan
    target: BuildTarget
    make_builder: Callable[..., ArchiveBuilder]

    def row(self) -> ArchiveBuild:
        build = self.catalog.call(lambda s: s.get(ArchiveBuild, self.plan.digest))
        assert build is not None
        return build

    def edit(self, **values: object) -> None:
        def run(session: Session) -> None:
            build = session.get(ArchiveBuild, self.plan.digest)
            assert build is not None
            for name, value in values.items():
                setattr(build, name, value)

        self.catalog.call(run)

    def wait_for(self, *states: BuildState) -> ArchiveBuild:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            build = self.row()
            if build.state in states:
                return build
            time.sleep(0.05)
        raise AssertionError(f"build stayed {self.row().state}")


def full_fine_tune_with_noise(catalog: Catalog, store: BlobStore, noise: int) -> str:
    """A Full fine-tune whose checkpoint carries ``noise`` random bytes: slow to compress."""
    files = {**demo.demo_base_files(), "noise.bin": os.urandom(noise)}
    spec = CheckpointSpec(20, finetunes.FINAL, finetunes.MODEL, store_files(store, files))
    return register_fine_tune(
        catalog,
        store,
        "acct",
        base_model_id="base",
        training_type=finetunes.FULL,
        checkpoints=[spec],
    )


@pytest.fixture
def builds(catalog_url: str, tmp_path: Path) -> Iterator[Fixture]:
    catalog = Catalog.open(catalog_url)
    store = open_store(Settings(data_dir=tmp_path))
    catalog.call(lambda s: accounts.create_account(s, "acct"))
    register_model(catalog, store, "acct", "base", demo.demo_base_files(), {})
    adapter = store_files(store, demo.demo_adapter_files(10))
    ft_id = register_fine_tune(
        catalog,
        store,
        "acct",
        base_model_id="base",
        training_type=finetunes.LORA,
        checkpoints=[CheckpointSpec(10, finetunes.FINAL, finetunes.ADAPTER, adapter)],
    )
    job = catalog.call(lambda s: s.get(FineTune, ft_id))
    assert job is not None
    plans = PlanCache()
    plan = plans.get(store, job, select_artifact(job, "merged", None))
    made: list[ArchiveBuilder] = []

    def make_builder(lease: float = 30, level: int = 3) -> ArchiveBuilder:
        builder = ArchiveBuilder(catalog, store, PlanCache(), level=level, threads=1, lease=lease)
        made.append(builder)
        return builder

    yield Fixture(catalog, store, plan, BuildTarget(ft_id, 10, "merged"), make_builder)
    for builder in made:
        builder.close()
    catalog.close()


def test_many_replicas_asking_for_one_build_make_one(builds: Fixture) -> None:
    replicas = [builds.make_builder() for _ in range(3)]
    for replica in replicas:
        replica.start()
    with ThreadPoolExecutor(12) as pool:
        asked = list(
            pool.map(lambda i: replicas[i % 3].submit(builds.plan, builds.target), range(12))
        )
    assert sum(asked) == 1
    build = builds.wait_for(BuildState.READY, BuildState.FAILED)
    assert (build.state, build.attempts, build.error) == (BuildState.READY, 1, "")
    assert build.blob_sha256 is not None and builds.store.head(build.blob_sha256) is not None
    assert build.done_bytes == build.total_bytes == builds.plan.tar_size
    # Asked again once it exists: nothing new is queued.
    assert not replicas[0].submit(builds.plan, builds.target)


def test_a_build_another_replica_is_running_is_left_alone(builds: Fixture) -> None:
    builds.make_builder().submit(builds.plan, builds.target)
    lease_until = utcnow() + timedelta(hours=1)
    builds.edit(state=BuildState.BUILDING, owner="elsewhere:1:a", lease_until=lease_until)
    newcomer = builds.make_builder(lease=0.3)
    assert builds.catalog.call(newcomer.claim) is None
    newcomer.start()
    time.sleep(1.5)  # several sweeps of the newcomer
    build = builds.row()
    assert (build.state, build.owner, build.attempts) == (BuildState.BUILDING, "elsewhere:1:a", 0)


def test_a_dead_builders_build_is_taken_over_when_its_lease_expires(builds: Fixture) -> None:
    builds.make_builder().submit(builds.plan, builds.target)
    expired = utcnow() - timedelta(seconds=1)
    builds.edit(
        state=BuildState.BUILDING, owner="dead:1:a", lease_until=expired, attempts=1, done_bytes=7
    )
    survivor = builds.make_builder()
    survivor.start()
    build = builds.wait_for(BuildState.READY, BuildState.FAILED)
    assert (build.state, build.attempts, build.owner) == (BuildState.READY, 2, "")


def test_a_build_whose_builders_keep_dying_is_failed(builds: Fixture) -> None:
    builder = builds.make_builder()
    builder.submit(builds.plan, builds.target)
    expired = utcnow() - timedelta(seconds=1)
    builds.edit(
        state=BuildState.BUILDING, owner="dead:1:a", lease_until=expired, attempts=MAX_ATTEMPTS
    )
    assert builds.catalog.call(builder.claim) is None
    build = builds.row()
    assert build.state == BuildState.FAILED and "abandoned" in build.error
    # Asking again starts over.
    assert builder.submit(builds.plan, builds.target)
    assert (builds.row().state, builds.row().attempts) == (BuildState.PENDING, 0)


def test_a_builder_that_lost_its_claim_learns_it_at_its_next_renewal(builds: Fixture) -> None:
    builder = builds.make_builder()
    builder.submit(builds.plan, builds.target)
    claim = builds.catalog.call(builder.claim)
    assert claim is not None and claim.digest == builds.plan.digest
    builder.renew(claim.digest, 5)
    assert builds.row().done_bytes == 5 and builds.row().owner == builder.owner
    builds.edit(owner="thief:1:b")
    with pytest.raises(BuildLost):
        builder.renew(claim.digest, 6)
    assert (builds.row().owner, builds.row().done_bytes) == ("thief:1:b", 5)


def test_a_long_build_keeps_its_claim_by_renewing_its_lease(builds: Fixture) -> None:
    # Random bytes at level 19 take seconds to compress: several times the lease.
    ft_id = full_fine_tune_with_noise(builds.catalog, builds.store, 32 << 20)
    job = builds.catalog.call(lambda s: s.get(FineTune, ft_id))
    assert job is not None
    builds.plan = PlanCache().get(
        builds.store, job, select_artifact(job, "model_output_path", None)
    )
    builder, rival = builds.make_builder(lease=1.5, level=19), builds.make_builder(lease=1.5)
    builder.start()
    assert builder.submit(builds.plan, BuildTarget(ft_id, 20, "model"))
    builds.wait_for(BuildState.BUILDING)
    rival.start()  # sweeps every half second, ready to take over an expired lease
    build = builds.wait_for(BuildState.READY, BuildState.FAILED)
    assert (build.state, build.attempts, build.level) == (BuildState.READY, 1, 19)
    updated = build.updated_at - build.created_at
    assert updated > timedelta(seconds=3), "the build was too quick to test its heartbeat"
