"""What a download is made of: remote files, their identity on the server, safe local paths."""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from pathlib import Path

from weightport.client.errors import RemoteChanged, ServerError, UnsafePath, error_from_response
from weightport.client.http import (
    HttpSession,
    disposition_filename,
    error_body,
    finish,
    parse_content_range,
    parse_unsatisfied_range,
    range_header,
    strong_etag,
)

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_REPR_DIGEST_SHA256 = re.compile(r"(?:^|,)\s*sha-256=:([A-Za-z0-9+/=]+):")


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch, as a source lists it.

    ``relpath`` is the POSIX path below the download directory. ``headers`` are sent with
    every request for this file (a Bearer key for API-served archives; nothing for signed
    URLs). ``signed`` marks pre-signed URLs, whose 403 answers mean "ask for fresh URLs".
    ``size`` and ``sha256`` are what the listing promises, when it does.
    """

    relpath: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    signed: bool = False
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class RemoteIdentity:
    """What the server says about a file: size, strong ETag, Range support, name, digest.

    ``confirmed`` is ``False`` for an identity taken from the listing alone
    (:func:`listed_identity`): the server has not answered for the file yet, so its ETag is
    unknown and the first answer supplies it.
    """

    size: int
    etag: str | None
    ranges: bool
    filename: str | None = None
    sha256: str | None = None
    confirmed: bool = True


def normalize_sha256(value: object) -> str | None:
    """A lower-case sha256 hex digest, or ``None`` when ``value`` is not one."""
    if not isinstance(value, str):
        return None
    value = value.strip().lower()
    return value if _SHA256_HEX.match(value) else None


def repr_digest_sha256(value: str | None) -> str | None:
    """The sha256 (hex) from an RFC 9530 ``Repr-Digest`` header, when it carries one."""
    match = _REPR_DIGEST_SHA256.search(value or "")
    if match is None:
        return None
    try:
        raw = base64.b64decode(match[1], validate=True)
    except (binascii.Error, ValueError):
        return None
    return raw.hex() if len(raw) == 32 else None


def safe_target(root: Path, relpath: str) -> Path:
    """The local path for ``relpath`` below ``root``; raises :class:`UnsafePath` otherwise.

    Refuses absolute names, ``..`` and ``.`` segments, empty segments, backslashes and NULs,
    and names that would leave ``root`` through a symlink already on disk.
    """
    if not relpath or "\x00" in relpath or "\\" in relpath or relpath.startswith("/"):
        raise UnsafePath(f"refusing remote file name {relpath!r}")
    parts = relpath.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafePath(f"refusing remote file name {relpath!r}")
    base = Path(os.path.realpath(root))
    target = base.joinpath(*parts)
    real_parent = Path(os.path.realpath(target.parent))
    if real_parent != base and base not in real_parent.parents:
        raise UnsafePath(f"remote file {relpath!r} would be written outside {root}")
    return target


def listed_identity(remote: RemoteFile) -> RemoteIdentity | None:
    """The identity the listing promises, when it names both size and sha256; else ``None``.

    Such a file needs no probe before its parts are requested: the size plans the parts,
    the digest verifies every byte at the end, and the first ranged answer confirms the
    size (its ``Content-Range``), Range support and the ETag (:meth:`Transfer.confirm_etag`).
    """
    if remote.size is None or remote.sha256 is None:
        return None
    return RemoteIdentity(size=remote.size, etag=None, ranges=True, confirmed=False)


def probe(session: HttpSession, remote: RemoteFile) -> RemoteIdentity:
    """Ask the server for a file's identity with a one-byte ``Range`` GET.

    206 means ranges work (the total comes from ``Content-Range``); 200 means the server
    ignores ``Range`` and the file must be fetched in one stream; 416 ``bytes */0`` is an
    empty file. The body is never read beyond one byte.
    """
    headers = {**dict(remote.headers), "Range": range_header(0, 1)}
    resp = session.open_body(remote.url, headers)
    complete = False
    try:
        if resp.status >= 400 and resp.status != 416:
            raise error_from_response(resp.status, error_body(resp), signed_url=remote.signed)
        etag = strong_etag(resp.headers.get("ETag"))
        filename = disposition_filename(resp.headers.get("Content-Disposition"))
        digest = repr_digest_sha256(resp.headers.get("Repr-Digest"))
        if resp.status == 416:
            size = parse_unsatisfied_range(resp.headers.get("Content-Range"))
            if size != 0:
                raise ServerError(f"{remote.relpath}: unexpected 416 for bytes=0-0", status=416)
            ranges = True
        elif resp.status == 206:
            content_range = parse_content_range(resp.headers.get("Content-Range"))
            if content_range is None or content_range.total is None:
                raise ServerError(
                    f"{remote.relpath}: 206 without a usable Content-Range", status=206
                )
            size, ranges = content_range.total, True
            resp.read()
            complete = True
        else:
            length = resp.headers.get("Content-Length")
            if length is not None and length.isdigit():
                size = int(length)
            elif remote.size is not None:
                size = remote.size
            else:
                raise ServerError(f"{remote.relpath}: the server sent no size", status=resp.status)
            ranges = False
    finally:
        finish(resp, complete=complete)
    if remote.size is not None and remote.size != size:
        raise RemoteChanged(
            f"{remote.relpath}: the listing says {remote.size} bytes but the server has {size}"
        )
    return RemoteIdentity(size=size, etag=etag, ranges=ranges, filename=filename, sha256=digest)
