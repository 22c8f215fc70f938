"""Reading .tar.zst archives in tests: decompress with python-zstandard, list with tarfile."""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from typing import Any

import httpx
import zstandard

from weightport.archive.headers import MTIME
from weightport.archive.names import tree_entries


def archive_files(data: bytes) -> dict[str, bytes]:
    """Every regular file of a .tar.zst, by its full member name (top folder included)."""
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            assert not member.name.startswith("/") and ".." not in member.name.split("/")
            if member.isfile():
                extracted = tar.extractfile(member)
                assert extracted is not None
                files[member.name] = extracted.read()
    return files


def strip_top(files: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """(the single top-level folder, files relative to it)."""
    tops = {name.split("/", 1)[0] for name in files}
    assert len(tops) == 1, tops
    top = tops.pop()
    return top, {name.split("/", 1)[1]: body for name, body in files.items()}


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(body).hexdigest() for name, body in files.items()}


def tarfile_reference(top: str, files: dict[str, bytes]) -> bytes:
    """What CPython's own tarfile writes for these files in weightport's layout (PAX, UTF-8,
    directories first, fixed mtime and modes): the archive's tar must equal it byte for byte."""
    out = io.BytesIO()
    names = list(files)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
        for entry in tree_entries(top, names):
            info = tarfile.TarInfo("/".join((top, *entry.segments)))
            info.mtime = MTIME
            if entry.index is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
            else:
                data = files[names[entry.index]]
                info.size, info.mode = len(data), 0o644
                tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def wait_for_build(client: httpx.Client, ft_id: str, artifact: str) -> dict[str, Any]:
    """The build of ``artifact`` for the fine-tune's final (highest) step, once every build
    of that artifact has settled: with several checkpoints prebuilt, the first one listed
    may be another step's, and the final step's build can still be running."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/fine-tunes/{ft_id}").json()
        builds = [b for b in job["weightport_archives"] if b["artifact"] == artifact]
        if builds and all(b["state"] in ("ready", "failed") for b in builds):
            build: dict[str, Any] = max(builds, key=lambda b: b["step"] or 0)
            return build
        time.sleep(0.2)
    raise AssertionError("archive build did not finish")
