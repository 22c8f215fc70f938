"""The deterministic, random-access ``.tar.zst`` view of a set of files.

Build an :class:`ArchivePlan` from a top folder name and members; then serve either

- :func:`stored_archive` — zstd raw blocks over the tar: size known up front, any Range
  computed on demand, no compression CPU; or
- :func:`compress_archive` — independent compressed frames written once to a blob, with a
  :class:`CompressedIndex` to cache beside it.

Both decompress (``zstd -d``, ``tar --zstd -xf``, python-zstandard) to the same tar bytes.
"""

from weightport.archive.compressed import (
    ArchiveWriter,
    CompressedFrame,
    CompressedIndex,
    compress_archive,
)
from weightport.archive.plan import ArchiveMember, ArchivePlan, TarView
from weightport.archive.stored import StoredArchive, stored_archive

__all__ = [
    "ArchiveMember",
    "ArchivePlan",
    "ArchiveWriter",
    "CompressedFrame",
    "CompressedIndex",
    "StoredArchive",
    "TarView",
    "compress_archive",
    "stored_archive",
]
