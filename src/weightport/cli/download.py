"""``weightport download``: fetch a Fireworks model or a Together fine-tune, fast and resumably.

Errors print as one line (``Error: ...``) and exit 1 (2 for unusable arguments); Ctrl-C
keeps the partial files and their state, prints how to resume, and exits 130.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from weightport.cli.errors import reports_failures
from weightport.cli.options import client_options
from weightport.client import (
    DownloadOptions,
    DownloadResult,
    FineTuneRef,
    FireworksModel,
    HttpSession,
    ProgressSnapshot,
    Source,
    TogetherCheckpoint,
    download,
    extract_tar_zst,
    parse_model_name,
    resolve_api,
)

if TYPE_CHECKING:
    from rich.progress import TaskID

F = TypeVar("F", bound=Callable[..., Any])

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``64M``, ``64MiB``, ``1g`` or a plain byte count (binary units) → bytes."""
    match = _SIZE.match(text)
    if match is None:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 64M, 1G, 1048576)")
    return int(match[1]) * _UNITS[match[2].lower()]


def common_options(fn: F) -> F:
    """Options every download command takes."""
    options = [
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object at the end."),
        click.option("-q", "--quiet", is_flag=True, help="No progress bars or summary."),
        click.option(
            "--part-size",
            default="auto",
            show_default=True,
            help="Bytes per ranged request (e.g. 16M, 1G); auto: about two per connection, "
            "8-64 MiB.",
        ),
        click.option(
            "--connections",
            default="auto",
            show_default=True,
            help="Parallel connections (1-256); auto: 4 to a near server, 32 to one 10 ms "
            "or more away.",
        ),
    ]
    for option in options:
        fn = option(fn)
    return fn


class RichProgress:
    """Progress sink: one overall bar plus one bar per file in flight, on stderr."""

    def __init__(self) -> None:
        # Imported here: rich takes ~35 ms to import, a sizeable share of a scripted
        # `--quiet`/`--json` download that never shows a bar (BENCHMARKS.md, downloader_link).
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self.overall: TaskID | None = None
        self.rows: dict[str, TaskID] = {}

    def __call__(self, snapshot: ProgressSnapshot) -> None:
        if self.overall is None:
            # Shown from the first snapshot on: a display started earlier and stopped by an
            # error before any transfer renders as a stray blank line above the error.
            self.progress.start()
            self.overall = self.progress.add_task("total", total=snapshot.total)
        self.progress.update(self.overall, total=snapshot.total, completed=snapshot.done)
        for f in snapshot.files:
            row = self.rows.get(f.relpath)
            if f.phase in ("downloading", "verifying"):
                label = f"  {f.relpath}" + (" (verifying)" if f.phase == "verifying" else "")
                if row is None:
                    self.rows[f.relpath] = self.progress.add_task(label, total=f.size)
                    row = self.rows[f.relpath]
                self.progress.update(row, description=label, completed=f.done)
            elif row is not None:
                self.progress.remove_task(row)
                del self.rows[f.relpath]

    @contextmanager
    def shown(self) -> Iterator[RichProgress]:
        try:
            yield self
        finally:
            if self.overall is not None:
                self.progress.stop()


def _options(connections: str, part_size: str) -> DownloadOptions:
    count = None if connections == "auto" else _count(connections)
    size = None if part_size == "auto" else parse_size(part_size)
    return DownloadOptions(connections=count, part_size=size).validate()


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 256:
        raise click.BadParameter(f"{text!r} is not auto or a number from 1 to 256")
    return int(text)


def _run(source: Source, dest: Path, options: DownloadOptions, quiet: bool) -> DownloadResult:
    sink = None if quiet else RichProgress()
    with sink.shown() if sink else nullcontext():
        return download(source, dest, options, sink)


def _summary(result: DownloadResult, where: Path) -> str:
    total = sum(f.size for f in result.files)
    rate = result.downloaded_bytes / result.seconds / 1e6 if result.seconds > 0 else 0.0
    notes = []
    resumed = sum(f.resumed_bytes for f in result.files)
    skipped = sum(1 for f in result.files if f.skipped)
    if resumed:
        notes.append(f"{resumed / 1e6:.1f} MB resumed")
    if skipped:
        notes.append(f"{skipped} already present")
    extra = f" ({', '.join(notes)})" if notes else ""
    speed = f"{rate:.1f}" if rate < 10 else f"{rate:.0f}"  # a small merged archive: not "0"
    return (
        f"Downloaded {len(result.files)} file(s), {total / 1e6:.1f} MB, to {where} in "
        f"{result.seconds:.1f} s at {speed} MB/s{extra}"
    )


def _files_json(result: DownloadResult) -> list[dict[str, Any]]:
    return [
        {
            "path": f.relpath,
            "size": f.size,
            "sha256": f.sha256,
            "verified": f.verified,
            "resumed_bytes": f.resumed_bytes,
            "skipped": f.skipped,
        }
        for f in result.files
    ]


@click.group("download")
def download_group() -> None:
    """Download models and fine-tunes: parallel ranged requests, resumable, verified.

    \b
    Interrupted (Ctrl-C, a dropped connection, a crash)? Run the same command again: it
    continues from FILE.wpdl.part and its state FILE.wpdl. Files get their final name only
    once verified (sha256 when the server offers one, else size and ETag).
    Exit status: 0 done, 1 failed, 2 unusable arguments, 130 interrupted.
    """


@download_group.command("model")
@click.argument("name")
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Directory to download into [default: ./MODEL].",
)
@common_options
@client_options(account=True)
@reports_failures
def model_command(
    name: str,
    account: str | None,
    output: Path | None,
    base_url: str | None,
    api_key: str | None,
    connections: str,
    part_size: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Download every file of a Fireworks-style model (ACCOUNT/MODEL, or MODEL of --account)."""
    options = _options(connections, part_size)
    api = resolve_api("fireworks", base_url=base_url, api_key=api_key, account=account)
    # An account spelled in NAME wins over the environment's; a flag must agree with it.
    account_id, model_id = parse_model_name(name, account if "/" in name else api.account)
    source = FireworksModel(HttpSession(connections=2), api, account_id, model_id)
    dest = output if output is not None else Path(model_id)
    result = _run(source, dest, options, quiet or as_json)
    if as_json:
        doc = {
            "object": "download",
            "model": source.name,
            "path": str(dest.resolve()),
            "files": _files_json(result),
            "size": sum(f.size for f in result.files),
            "downloaded_bytes": result.downloaded_bytes,
            "seconds": round(result.seconds, 3),
        }
        click.echo(json.dumps(doc))
    elif not quiet:
        click.echo(_summary(result, dest))


@download_group.command("finetune")
@click.argument("ft_id")
@click.option(
    "-c",
    "--checkpoint",
    type=click.Choice(["merged", "adapter", "model_output_path", "default"]),
    default=None,
    help="What to fetch [default: merged for LoRA jobs, model_output_path otherwise].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Archive file or existing directory; with --extract, the directory to "
    "extract into [default: the server's file name in the current directory].",
)
@click.option(
    "--extract",
    is_flag=True,
    help="Unpack the .tar.zst once downloaded (streamed; unsafe members refused).",
)
@click.option(
    "--strip-components",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="With --extract: drop this many leading path components.",
)
@click.option("--keep-archive", is_flag=True, help="With --extract: keep the .tar.zst.")
@common_options
@client_options(account=False)
@reports_failures
def finetune_command(
    ft_id: str,
    checkpoint: str | None,
    output: Path | None,
    extract: bool,
    strip_components: int,
    keep_archive: bool,
    base_url: str | None,
    api_key: str | None,
    connections: str,
    part_size: str,
    quiet: bool,
    as_json: bool,
) -> None:
    """Download a Together-style fine-tune (FT_ID or FT_ID:STEP) as one .tar.zst archive."""
    options = _options(connections, part_size)
    api = resolve_api("together", base_url=base_url, api_key=api_key)
    ref = FineTuneRef.parse(ft_id)
    source = TogetherCheckpoint(HttpSession(connections=2), api, ref, checkpoint).resolve()
    archive, extract_to = _finetune_paths(output, source.filename, extract)
    source.filename = archive.name
    result = _run(source, archive.parent, options, quiet or as_json)
    doc: dict[str, Any] = {
        "object": "download",
        "id": ref.ft_id,
        "checkpoint": source.checkpoint,
        "checkpoint_step": ref.step,
        "filename": str(archive.resolve()),
        "size": result.files[0].size,
        "sha256": result.files[0].sha256,
        "verified": result.files[0].verified,
        "downloaded_bytes": result.downloaded_bytes,
        "seconds": round(result.seconds, 3),
    }
    if extract_to is not None:
        if not quiet and not as_json:
            click.echo(f"Extracting into {extract_to} ...", err=True)
        unpacked = extract_tar_zst(archive, extract_to, strip_components=strip_components)
        doc.update(extracted_to=str(extract_to.resolve()), extracted_files=unpacked.files)
        if not keep_archive:
            archive.unlink()
            doc["filename"] = None
    if as_json:
        click.echo(json.dumps(doc))
    elif not quiet:
        click.echo(_summary(result, archive))
        if extract_to is not None:
            click.echo(f"Extracted to {extract_to}")


def _finetune_paths(output: Path | None, served: str, extract: bool) -> tuple[Path, Path | None]:
    """(archive path, extraction directory or None) from ``-o`` and the served file name."""
    if extract:
        stem = served.removesuffix(".zst").removesuffix(".tar")
        directory = output if output is not None else Path(stem)
        return directory.parent / served, directory
    if output is None:
        return Path(served), None
    if output.is_dir() or str(output).endswith(os.sep):
        return output / served, None
    return output, None


if __name__ == "__main__":  # pragma: no cover - `python -m weightport.cli.download`
    download_group()
