"""The Hub view of the catalog without HTTP: repository names, branches, commits, listings."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from weightport import demo
from weightport.catalog import accounts, finetunes
from weightport.catalog.db import Catalog
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.errors import EntryNotFound, RepoNotFound, RevisionNotFound
from weightport.ingest import register_model
from weightport.services.hub.files import RevisionFiles, revision_files
from weightport.services.hub.repos import Repo, find_repo
from weightport.services.hub.revisions import RevisionKind
from weightport.services.hub.tree import git_blob_id, lfs_pointer, list_tree, paths_info
from weightport.storage.local import LocalStore

COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Registry:
    catalog: Catalog
    store: LocalStore

    def repo(self, repo_id: str, account: str = "acct") -> Repo:
        return self.catalog.call(lambda s: find_repo(s, account, repo_id))

    def files(self, repo_id: str, revision: str = "main") -> RevisionFiles:
        return revision_files(self.store, self.repo(repo_id).revision(revision))

    def model(self, model_id: str, files: dict[str, bytes], account: str = "acct") -> None:
        register_model(self.catalog, self.store, account, model_id, files, {})

    def lora(self, steps: dict[int, str], *, output: str = "", account: str = "acct") -> str:
        specs = [
            CheckpointSpec(
                step,
                kind,
                finetunes.ADAPTER,
                store_files(self.store, demo.demo_adapter_files(step)),
            )
            for step, kind in steps.items()
        ]
        return register_fine_tune(
            self.catalog,
            self.store,
            account,
            base_model_id="base",
            training_type=finetunes.LORA,
            checkpoints=specs,
            model_output_name=output,
        )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")

    def setup(session: Session) -> None:
        accounts.create_account(session, "acct")
        accounts.create_account(session, "other")

    catalog.call(setup)
    found = Registry(catalog, LocalStore(tmp_path / "store"))
    found.model("base", demo.demo_base_files())
    yield found
    catalog.close()


FINAL = finetunes.FINAL
STEP = finetunes.INTERMEDIATE


def test_a_model_is_a_repo_with_a_content_commit(registry: Registry) -> None:
    repo = registry.repo("acct/base")
    (main,) = repo.revisions
    assert main.name == "main" and main.kind is RevisionKind.FILES and COMMIT.fullmatch(main.sha)
    # The same bytes under another name are the same commit; one changed byte is another.
    registry.model("copy", demo.demo_base_files())
    assert registry.repo("acct/copy").revisions[0].sha == main.sha
    registry.model("changed", {**demo.demo_base_files(), "config.json": b"{}"})
    assert registry.repo("acct/changed").revisions[0].sha != main.sha


def test_other_accounts_and_missing_repos_are_one_error(registry: Registry) -> None:
    with pytest.raises(RepoNotFound) as foreign:
        registry.repo("acct/base", account="other")
    with pytest.raises(RepoNotFound) as missing:
        registry.repo("other/base", account="other")
    assert str(foreign.value) == "Repository acct/base not found"
    assert str(missing.value) == "Repository other/base not found"
    for bad in ("acct", "acct/", "acct/a/b", "/base"):
        with pytest.raises(RepoNotFound):
            registry.repo(bad)


def test_fine_tune_branches_and_names(registry: Registry) -> None:
    ft_id = registry.lora({10: STEP, 30: FINAL}, output="someone/llama-sft")
    repo = registry.repo("acct/llama-sft")
    assert registry.repo(f"acct/{ft_id}").revisions == repo.revisions
    names = [r.name for r in repo.revisions]
    assert names == ["main", "adapter", "step-10", "step-30", "adapter-step-10", "adapter-step-30"]
    by_name = {r.name: r for r in repo.revisions}
    assert by_name["main"].sha == by_name["step-30"].sha
    assert by_name["adapter"].sha == by_name["adapter-step-30"].sha
    assert len({r.sha for r in repo.revisions}) == 4
    assert by_name["main"].kind is RevisionKind.MERGED
    assert by_name["adapter"].kind is RevisionKind.ADAPTER
    # A commit names a revision as well as its branch does; refs/heads/<branch> too.
    assert repo.revision(by_name["step-10"].sha).name == "step-10"
    assert repo.revision("refs/heads/adapter").sha == by_name["adapter"].sha
    with pytest.raises(RevisionNotFound, match="branches of acct/llama-sft: main, adapter"):
        repo.revision("step-20")
    # Another account cannot reach it by id either.
    with pytest.raises(RepoNotFound):
        registry.repo(f"other/{ft_id}", account="other")


def test_a_model_wins_over_an_output_name_and_the_newest_job_wins(registry: Registry) -> None:
    registry.lora({10: FINAL}, output="acct/base")
    assert registry.repo("acct/base").revisions[0].kind is RevisionKind.FILES
    registry.lora({10: FINAL}, output="acct/sft")
    newer = registry.lora({20: FINAL}, output="acct/sft")
    assert registry.repo("acct/sft").revisions == registry.repo(f"acct/{newer}").revisions


def test_a_running_lora_job_has_steps_but_no_main(registry: Registry) -> None:
    ft_id = registry.lora({10: STEP})
    repo = registry.repo(f"acct/{ft_id}")
    assert [r.name for r in repo.revisions] == ["step-10", "adapter-step-10"]
    with pytest.raises(RevisionNotFound, match="no final checkpoint yet"):
        repo.revision("main")


def test_a_full_fine_tune_serves_its_weights(registry: Registry) -> None:
    weights = {**demo.demo_base_files(seed=5)}
    spec = CheckpointSpec(7, FINAL, finetunes.MODEL, store_files(registry.store, weights))
    ft_id = register_fine_tune(
        registry.catalog,
        registry.store,
        "acct",
        base_model_id="base",
        training_type=finetunes.FULL,
        checkpoints=[spec],
    )
    repo = registry.repo(f"acct/{ft_id}")
    assert [r.name for r in repo.revisions] == ["main", "step-7"]
    files = registry.files(f"acct/{ft_id}")
    assert [f.path for f in files] == sorted(weights)
    assert all(f.blob == f.sha256 == f.etag for f in files)


def test_merged_files_know_sizes_and_etags_before_merging(registry: Registry) -> None:
    ft_id = registry.lora({10: STEP, 30: FINAL})
    files = registry.files(f"acct/{ft_id}")
    base = registry.files("acct/base")
    assert [f.path for f in files] == [f.path for f in base]
    for merged, plain in zip(files, base, strict=True):
        assert merged.size == plain.size
        if merged.path == "model.safetensors":
            # Not the content's sha256, and not pretending to be one: 40 hex.
            assert merged.sha256 is None and merged.blob is None
            assert re.fullmatch(r"[0-9a-f]{40}", merged.etag)
        else:
            assert merged.etag == plain.etag and merged.blob == plain.blob
    step = registry.files(f"acct/{ft_id}", "step-10").get("model.safetensors")
    assert step.etag != files.get("model.safetensors").etag


def test_adapter_config_names_the_base_repo(registry: Registry) -> None:
    ft_id = registry.lora({30: FINAL})
    files = registry.files(f"acct/{ft_id}", "adapter")
    config_file = files.get("adapter_config.json")
    served = bytearray(config_file.size)
    config_file.source.readinto(0, memoryview(served))
    config = json.loads(served)
    original = json.loads(demo.demo_adapter_files(30)["adapter_config.json"])
    assert config == {**original, "base_model_name_or_path": "acct/base"}
    assert config_file.etag == config_file.sha256 == hashlib.sha256(served).hexdigest()
    assert config_file.blob is None
    weights = files.get("adapter_model.safetensors")
    assert weights.blob == weights.sha256


def test_tree_listing(registry: Registry) -> None:
    registry.model(
        "nested",
        {"config.json": b"{}", "a/b/c.txt": b"c", "a/d.txt": b"dd", "a-z.txt": b"z"},
    )
    files = registry.files("acct/nested")
    top = list_tree(files, "", recursive=False)
    assert [(e.path, e.is_dir) for e in top] == [
        ("a", True),
        ("a-z.txt", False),
        ("config.json", False),
    ]
    everything = list_tree(files, "", recursive=True)
    assert [e.path for e in everything] == [
        "a",
        "a/b",
        "a/b/c.txt",
        "a/d.txt",
        "a-z.txt",
        "config.json",
    ]
    assert [e.path for e in list_tree(files, "a", recursive=False)] == ["a/b", "a/d.txt"]
    with pytest.raises(EntryNotFound) as missing:
        list_tree(files, "config.json", recursive=False)
    assert missing.value.commit == files.sha
    entry = next(e for e in everything if e.path == "a/d.txt")
    sha = hashlib.sha256(b"dd").hexdigest()
    assert entry.lfs_sha256 == sha and entry.oid == git_blob_id(lfs_pointer(sha, 2))
    assert entry.pointer_size == len(lfs_pointer(sha, 2))
    assert [e.path for e in paths_info(files, ["a", "nope", "a/d.txt", "a"])] == ["a", "a/d.txt"]


def test_git_blob_id_matches_git() -> None:
    # `printf 'hello\n' | git hash-object --stdin`
    assert git_blob_id(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"
