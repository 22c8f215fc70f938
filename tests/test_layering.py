"""The package tree is the architecture: imports only point down, checked statically.

Layers, lowest first (a unit is a subpackage or a top-level module of ``weightport``):

0. ``errors``, ``paths``, ``ranges``, ``config``, ``signing``, ``observability`` (metrics and
   log formats, which every layer records into) and the package itself
1. ``storage``, ``catalog``
2. ``archive``, ``merge`` — bytes only through ``storage``'s ``ByteSource``
3. ``services``, ``ingest``, ``checkpoint_import``, ``demo`` — what server and CLI share
4. ``server`` (the HTTP edge), ``client`` (HTTP only)
5. ``cli``, ``__main__``

A unit may import its own layer and the layers below. On top of that: only ``server/`` and
``cli/serve.py`` import ``weightport.server``; ``client/`` imports nothing but itself and
layer 0 (it must run where no server side is installed); only ``cli/`` imports ``client/``.
Every import statement counts, including ones inside functions and ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import weightport

PACKAGE = Path(weightport.__file__).parent

LAYERS = {
    "weightport": 0,
    "errors": 0,
    "paths": 0,
    "ranges": 0,
    "config": 0,
    "signing": 0,
    "observability": 0,
    "storage": 1,
    "catalog": 1,
    "archive": 2,
    "merge": 2,
    "services": 3,
    "ingest": 3,
    "checkpoint_import": 3,
    "demo": 3,
    "server": 4,
    "client": 4,
    "cli": 5,
    "__main__": 5,
}


@dataclass(frozen=True)
class Import:
    """One ``weightport`` import: which file makes it, of which module, on which line."""

    path: str  # relative to the package, e.g. "cli/serve.py"
    unit: str  # the importing unit
    target: str  # the imported module, e.g. "weightport.server.app"
    line: int

    @property
    def target_unit(self) -> str:
        parts = self.target.split(".")
        return parts[1] if len(parts) > 1 else "weightport"

    def __str__(self) -> str:
        return f"{self.path}:{self.line} imports {self.target}"


def _unit(relative: Path) -> str:
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _module(relative: Path) -> list[str]:
    parts = ["weightport", *relative.with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _is_unit(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def package_imports() -> Iterator[Import]:
    for file in sorted(PACKAGE.rglob("*.py")):
        relative = file.relative_to(PACKAGE)
        package = _module(relative) if relative.name == "__init__.py" else _module(relative)[:-1]
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                targets = [module]
                if module == "weightport":  # "from weightport import demo" imports a unit
                    targets = [
                        f"weightport.{alias.name}" if _is_unit(alias.name) else module
                        for alias in node.names
                    ]
            else:
                continue
            for target in targets:
                if target == "weightport" or target.startswith("weightport."):
                    yield Import(relative.as_posix(), _unit(relative), target, node.lineno)


IMPORTS = list(package_imports())


def test_the_walk_sees_the_imports() -> None:
    # The checks below are only as good as this walk: it must find known edges.
    found = {(i.path, i.target) for i in IMPORTS}
    assert ("cli/serve.py", "weightport.server.app") in found
    assert ("storage/local.py", "weightport.storage.base") in found
    assert ("__main__.py", "weightport.cli") in found


def test_every_unit_has_a_layer() -> None:
    units = {i.unit for i in IMPORTS} | {i.target_unit for i in IMPORTS}
    assert units - set(LAYERS) == set(), "place new units in LAYERS (and the docstring)"


def _downward(item: Import) -> bool:
    return LAYERS.get(item.target_unit, 99) <= LAYERS.get(item.unit, -1)


def _server_only_for_serve(item: Import) -> bool:
    return item.target_unit != "server" or item.unit == "server" or item.path == "cli/serve.py"


def _client_stands_alone(item: Import) -> bool:
    return item.unit != "client" or item.target_unit == "client" or LAYERS[item.target_unit] == 0


def _client_only_for_cli(item: Import) -> bool:
    return item.target_unit != "client" or item.unit in ("client", "cli")


RULES = {
    "downward": _downward,
    "server only for serve": _server_only_for_serve,
    "client stands alone": _client_stands_alone,
    "client only for cli": _client_only_for_cli,
}


def violations(rule: str) -> list[str]:
    return [str(item) for item in IMPORTS if not RULES[rule](item)]


@pytest.mark.parametrize("rule", sorted(RULES))
def test_imports_follow_the_layers(rule: str) -> None:
    assert violations(rule) == []


def test_a_violation_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    upward = Import("storage/x.py", "storage", "weightport.server.app", 3)
    monkeypatch.setattr(f"{__name__}.IMPORTS", [*IMPORTS, upward])
    for rule in ("downward", "server only for serve"):
        assert "storage/x.py:3 imports weightport.server.app" in violations(rule)
