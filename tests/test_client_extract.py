"""Safe streaming extraction of .tar.zst: real tarfile/zstandard archives, real GNU tar."""

from __future__ import annotations

import io
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
import zstandard

from weightport.client import UnsafeArchive, extract_tar_zst
from weightport.client.extract import member_path


def _member(name: str, data: bytes = b"", **attrs: object) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _archive(path: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    """A .tar.zst written as a stream of several zstd frames' worth of data."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    with path.open("wb") as fh, zstandard.ZstdCompressor(level=1).stream_writer(fh) as writer:
        writer.write(raw.getvalue())
    return path


def test_extracts_files_dirs_and_strips_components(tmp_path: Path) -> None:
    big = os.urandom(3 * 1024 * 1024 + 17)
    archive = _archive(
        tmp_path / "a.tar.zst",
        [
            _member("model/", type=tarfile.DIRTYPE, mode=0o755),
            _member("model/config.json", b"{}", mode=0o644),
            _member("model/shards/model.safetensors", big, mode=0o600),
            _member("model/run.sh", b"#!/bin/sh\n", mode=0o755),
        ],
    )
    out = tmp_path / "out"
    result = extract_tar_zst(archive, out, strip_components=1)
    assert (result.files, result.bytes) == (3, len(big) + 2 + 10)
    assert (out / "config.json").read_bytes() == b"{}"
    assert (out / "shards" / "model.safetensors").read_bytes() == big
    assert stat.S_IMODE((out / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "config.json").stat().st_mode) == 0o644
    assert not (out / "model").exists()


def test_gnu_tar_archive_extracts_identically(tmp_path: Path) -> None:
    if shutil.which("tar") is None or shutil.which("zstd") is None:
        pytest.skip("GNU tar with zstd is not installed")
    src = tmp_path / "src" / "ckpt"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.bin").write_bytes(os.urandom(200_000))
    (src / "tokenizer.json").write_text('{"a": 1}')
    archive = tmp_path / "ckpt.tar.zst"
    subprocess.run(
        ["tar", "--zstd", "-cf", str(archive), "-C", str(src.parent), "ckpt"], check=True
    )
    extract_tar_zst(archive, tmp_path / "out")
    for path in src.rglob("*"):
        if path.is_file():
            copy = tmp_path / "out" / "ckpt" / path.relative_to(src)
            assert copy.read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        (_member("../evil", b"x"), "'..'"),
        (_member("ok/../../evil", b"x"), "'..'"),
        (_member("/tmp/evil-abs", b"x"), "absolute"),
        (_member("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"), "symbolic links"),
        (_member("hard", type=tarfile.LNKTYPE, linkname="ok/a"), "hard links"),
        (_member("dev", type=tarfile.CHRTYPE, devmajor=1, devminor=3), "devices"),
        (_member("fifo", type=tarfile.FIFOTYPE), "FIFOs"),
    ],
)
def test_rejects_unsafe_members(
    tmp_path: Path, member: tuple[tarfile.TarInfo, bytes], reason: str
) -> None:
    archive = _archive(tmp_path / "evil.tar.zst", [_member("ok/a", b"fine"), member])
    out = tmp_path / "deep" / "out"
    with pytest.raises(UnsafeArchive, match=reason):
        extract_tar_zst(archive, out)
    assert not (tmp_path / "deep" / "evil").exists() and not (tmp_path / "evil").exists()
    assert [p.name for p in out.iterdir()] == ["ok"]  # nothing but the safe member


def test_existing_symlinked_directory_cannot_redirect_writes(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "model").symlink_to(outside)
    archive = _archive(tmp_path / "a.tar.zst", [_member("model/weights.bin", b"secret")])
    with pytest.raises(UnsafeArchive, match="not a directory"):
        extract_tar_zst(archive, out)
    assert list(outside.iterdir()) == []


def test_existing_symlinked_file_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").symlink_to(victim)
    archive = _archive(tmp_path / "a.tar.zst", [_member("config.json", b"overwritten")])
    with pytest.raises(UnsafeArchive, match="symbolic link"):
        extract_tar_zst(archive, out)
    assert victim.read_text() == "keep me"


def test_member_path_rules() -> None:
    assert str(member_path("./a//b/./c")) == "a/b/c"
    assert str(member_path("top/a/b", 1)) == "a/b"
    assert member_path("top/", 1) is None
    assert member_path("top/a", 5) is None
    for bad in ("/a", "a/../b", "..", "a\\..\\b", "a\x00b"):
        with pytest.raises(UnsafeArchive):
            member_path(bad)
