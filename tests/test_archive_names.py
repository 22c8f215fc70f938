"""Archive names: what is refused, and the fixed entry order."""

from __future__ import annotations

import pytest

from weightport.archive import ArchiveMember, ArchivePlan
from weightport.archive.names import tree_entries, validate_top
from weightport.errors import InvalidArgument
from weightport.storage.base import MemorySource


def _plan(*names: str, top: str = "model") -> ArchivePlan:
    return ArchivePlan.build(top, [ArchiveMember(n, MemorySource(b"x"), n) for n in names])


@pytest.mark.parametrize(
    "name",
    [
        "",
        "/etc/passwd",
        "../escape",
        "a/../../escape",
        "a/..",
        "./a",
        "a/./b",
        "a//b",
        "a/",
        "dir\\file",
        "nul\0byte",
        "new\nline",
        "tab\tname",
        "del\x7f",
        "surrogate\udc80",
        "x" * 256,
    ],
)
def test_unsafe_member_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidArgument):
        _plan(name)


@pytest.mark.parametrize("top", ["", ".", "..", "a/b", "/abs", "back\\slash", "x\0", "x" * 256])
def test_unsafe_top_folder_is_refused(top: str) -> None:
    with pytest.raises(InvalidArgument):
        _plan("config.json", top=top)


def test_duplicates_and_file_folder_clashes_are_refused() -> None:
    with pytest.raises(InvalidArgument, match="duplicate"):
        _plan("a.txt", "b.txt", "a.txt")
    with pytest.raises(InvalidArgument, match="both as file and as folder"):
        _plan("sub", "sub/file")


def test_overlong_full_path_is_refused() -> None:
    deep = "/".join(["d" * 200] * 20)  # 4019 bytes: fits alone, not below a long top folder
    _plan(deep, top="m")
    with pytest.raises(InvalidArgument, match="longer than"):
        _plan(deep, top="t" * 100)


def test_odd_but_safe_names_are_accepted() -> None:
    names = ["..hidden", ".env", "with space", "ünï/cödé.json", "a...b", "-dash", "x" * 255]
    plan = _plan(*names)
    assert sorted(m.name for m in plan.members) == sorted(names)
    assert validate_top("Meta-Llama-3.1-8B-Instruct_ft-1a2b") == (
        "Meta-Llama-3.1-8B-Instruct_ft-1a2b"
    )


def test_entries_walk_depth_first_with_folders_before_contents() -> None:
    names = ["z.json", "a.txt", "a/b/c.bin", "a/a.bin", "a-b", "é.txt"]
    order = [("/".join(e.segments) + ("/" if e.is_dir else "")) for e in tree_entries("t", names)]
    assert order == ["/", "a/", "a/a.bin", "a/b/", "a/b/c.bin", "a-b", "a.txt", "z.json", "é.txt"]


def test_entry_order_ignores_input_order() -> None:
    names = ["b/2", "a", "b/1", "c/d/e"]
    forward = [(e.segments, e.is_dir) for e in tree_entries("t", names)]
    backward = [(e.segments, e.is_dir) for e in tree_entries("t", names[::-1])]
    assert forward == backward
