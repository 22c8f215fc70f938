"""Bringing files from this machine into the store and the catalog (demo seed, imports).

Remote callers upload through the Fireworks signed-PUT flow; this path is for the server
operator: same store, same catalog rows, same validation.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

from sqlalchemy.orm import Session

from weightport.catalog import registry, uploads
from weightport.catalog.db import Catalog
from weightport.paths import validate_relative_path
from weightport.services.gc import pin_stored
from weightport.storage.base import BlobInfo, BlobStore

CHUNK = 4 << 20

#: What an imported file is: its bytes in memory, or a file on disk.
FileData = bytes | Path


def store_data(store: BlobStore, data: FileData) -> BlobInfo:
    """Write bytes or a local file into the store (deduplicated by sha256)."""
    with store.begin_upload() as upload:
        if isinstance(data, Path):
            with data.open("rb") as fh:
                while chunk := fh.read(CHUNK):
                    upload.write(chunk)
        else:
            upload.write(data)
        return upload.commit()


def directory_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by relative POSIX path (hidden files skipped)."""
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a directory")
    found: dict[str, Path] = {}

    def walk(folder: Path) -> Iterator[Path]:
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_symlink():
                raise ValueError(f"{entry} is a symbolic link; copy the real file in")
            if entry.is_dir():
                yield from walk(entry)
            elif entry.is_file():
                yield entry

    for path in walk(root):
        found[validate_relative_path(path.relative_to(root).as_posix())] = path
    return found


def register_model(
    catalog: Catalog,
    store: BlobStore,
    account_id: str,
    model_id: str,
    files: Mapping[str, FileData],
    fields: Mapping[str, object],
) -> None:
    """Create a READY model from local files, through the same steps a remote upload takes."""
    landed = {path: store_data(store, data) for path, data in sorted(files.items())}
    sizes = uploads.parse_sizes({path: info.size for path, info in landed.items()})

    def run(session: Session) -> None:
        pin_stored(session, store, [info.key for info in landed.values()])
        registry.create_model(session, account_id, model_id, fields)
        declared = uploads.declare_files(session, account_id, model_id, sizes)
        for file in declared:
            info = landed[file.path]
            uploads.land_file(
                session, account_id, model_id, file.path, file.generation, info.key, info.size
            )
        uploads.mark_ready(session, account_id, model_id)

    catalog.call(run)
