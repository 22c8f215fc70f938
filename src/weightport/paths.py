"""Relative file paths inside a model or archive: the one validator every layer uses.

A valid path is non-empty POSIX-style, relative, made of segments that are not empty, ``.`` or
``..``, with no backslash, NUL or other control character, at most 1024 bytes. Anything else
is rejected, never "cleaned": a caller who sent ``../x`` gets an error, not a different file.
"""

from __future__ import annotations

from weightport.errors import InvalidArgument

MAX_PATH_BYTES = 1024


def validate_relative_path(path: str, *, what: str = "file name") -> str:
    """Return ``path`` unchanged if it is a safe relative path, else raise InvalidArgument."""
    if not path:
        raise InvalidArgument(f"{what} must not be empty")
    if len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise InvalidArgument(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise InvalidArgument(f"{what} {path!r} contains a control character")
    if "\\" in path:
        raise InvalidArgument(f"{what} {path!r} contains a backslash; use '/'")
    if path.startswith("/"):
        raise InvalidArgument(f"{what} {path!r} must be relative, not absolute")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidArgument(
                f"{what} {path!r} has an empty, '.' or '..' segment; paths must stay inside "
                "their model"
            )
    return path
