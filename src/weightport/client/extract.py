"""Safe, streaming extraction of a ``.tar.zst`` archive.

The archive is decompressed and untarred in one pass (python-zstandard ``stream_reader``
feeding ``tarfile`` in stream mode ``"r|"``), so nothing but the output is written. Only
regular files and directories are accepted: absolute names, ``..`` segments, symlinks,
hard links, devices and FIFOs are refused with :class:`UnsafeArchive` before anything is
written for them, and every file is opened ``O_NOFOLLOW`` below a parent whose real path is
checked to lie inside the destination, so a symlink already on disk cannot redirect it.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import zstandard

from weightport.client.errors import UnsafeArchive

_CHUNK = 1 << 20


@dataclass(frozen=True)
class ExtractResult:
    """What an extraction wrote: regular files, their bytes, and directories created."""

    dest: Path
    files: int
    bytes: int
    directories: int


def member_path(name: str, strip_components: int = 0) -> PurePosixPath | None:
    """The relative path a member extracts to; ``None`` when stripping leaves nothing.

    Raises :class:`UnsafeArchive` for absolute names, ``..`` segments and NULs.
    """
    if "\x00" in name or name.startswith("/") or name.startswith("\\"):
        raise UnsafeArchive(f"refusing archive member {name!r}: absolute or invalid name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts or any("\\" in p for p in parts):
        raise UnsafeArchive(f"refusing archive member {name!r}: it climbs out with '..'")
    parts = parts[strip_components:]
    return PurePosixPath(*parts) if parts else None


def extract_tar_zst(archive: Path, dest: Path, *, strip_components: int = 0) -> ExtractResult:
    """Extract ``archive`` (zstd-compressed tar) into ``dest``, streaming; see module docs."""
    if strip_components < 0:
        raise ValueError("strip_components cannot be negative")
    dest.mkdir(parents=True, exist_ok=True)
    root = Path(os.path.realpath(dest))
    files = written = directories = 0
    buf = memoryview(bytearray(_CHUNK))
    with archive.open("rb") as raw:
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_size=_CHUNK)
        with reader, tarfile.open(fileobj=reader, mode="r|", bufsize=_CHUNK) as tar:
            for member in tar:
                rel = member_path(member.name, strip_components)
                if not (member.isreg() or member.isdir()):
                    raise UnsafeArchive(
                        f"refusing archive member {member.name!r}: "
                        f"{_kind(member)} are not extracted"
                    )
                if rel is None:
                    continue
                target = root.joinpath(*rel.parts)
                if member.isdir():
                    _make_dirs(root, target)
                    directories += 1
                    continue
                _make_dirs(root, target.parent)
                source = tar.extractfile(member)
                # Always a BufferedReader for regular members; checked to reach readinto().
                if not isinstance(source, io.BufferedIOBase):
                    raise UnsafeArchive(f"archive member {member.name!r} has no data")
                written += _write_file(target, source, member.mode, buf)
                files += 1
    return ExtractResult(dest=dest, files=files, bytes=written, directories=directories)


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return "symbolic links"
    if member.islnk():
        return "hard links"
    if member.ischr() or member.isblk():
        return "devices"
    if member.isfifo():
        return "FIFOs"
    return "special files"


def _make_dirs(root: Path, path: Path) -> None:
    """``mkdir -p`` that refuses to pass through anything but real directories in ``root``."""
    relative = path.relative_to(root)
    current = root
    for part in relative.parts:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            os.mkdir(current, 0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchive(f"refusing to extract through {current}: not a directory")


def _write_file(target: Path, source: io.BufferedIOBase, mode: int, buf: memoryview) -> int:
    perms = 0o755 if mode & 0o111 else 0o644
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, perms)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeArchive(f"refusing to write through the symbolic link {target}") from exc
        raise
    total = 0
    try:
        while n := source.readinto(buf):
            view = buf[:n]
            while view:
                view = view[os.write(fd, view) :]
            total += n
    finally:
        os.close(fd)
    return total
