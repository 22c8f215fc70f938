"""The project's own docs stand alone and stay complete."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path

import click

from weightport.cli import cli
from weightport.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".md", ".py", ".txt", ".toml", ".sh", ".cfg", ".ini", ".yaml", ".yml", ""}
SKIPPED_DIRS = {"__pycache__", "weightport-data", "build", "dist", "results", "data"}

# Notes kept outside the repository are not shipped with it: a pointer to them is a dead end.
OUTSIDE_NOTES = re.compile(
    r"\.\./shared|shared/(DESIGN|STYLE|reference)|DESIGN(\.md)? §|reference[ ]§"
)


def project_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIPPED_DIRS or p.endswith(".egg-info") for p in parts):
            continue
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            yield path


def test_nothing_points_outside_the_repository() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in project_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_NOTES.search(line)
    ]
    assert found == []


def test_the_scan_sees_the_project() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in project_files()}
    assert {"README.md", "Makefile", "requirements/test.txt", "src/weightport/errors.py"} <= names


def test_every_setting_is_in_the_readme_table() -> None:
    readme = (ROOT / "README.md").read_text()
    rows = "\n".join(line for line in readme.splitlines() if line.startswith("| `"))
    missing = [f.name for f in dataclasses.fields(Settings) if f"`{f.name}`" not in rows]
    assert missing == [], f"document these settings ({ENV_PREFIX}NAME) in README's table"


def readme_command_lines() -> list[str]:
    """The ``weightport ...`` lines of README's shell blocks, comments dropped."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", readme, flags=re.DOTALL)
    lines = (line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line.startswith("weightport ")]


def test_readme_commands_use_options_that_exist() -> None:
    lines = readme_command_lines()
    assert len(lines) >= 10
    for line in lines:
        command: click.Command = cli
        words = line.split()[1:]
        while isinstance(command, click.Group) and words:
            found = command.get_command(click.Context(command), words[0])
            if found is None:
                break
            command, words = found, words[1:]
        assert not isinstance(command, click.Group), line
        known = {opt for param in command.params for opt in param.opts}
        used = {w.strip("[]").split("=", 1)[0] for w in words if w.strip("[").startswith("-")}
        assert used <= known, f"{line}: unknown {sorted(used - known)}"
