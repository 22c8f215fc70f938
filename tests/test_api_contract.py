"""The API contract, checked by schemathesis against a live server: generated requests (valid
and invalid, stateful create → upload → validate → download links) with the owner's key,
another account's key, an unknown key and none — 0 answers ≥ 500, 0 answers outside the
OpenAPI document (status, content type, headers, body schema), 405s that carry ``Allow``.

Sized for ``make test`` by ``WEIGHTPORT_CONTRACT_EXAMPLES`` (examples per operation, default
25 for the owner; the other identities run a third of that); docs/reliability.md has the
longer run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from tests.conftest import LiveServer, demo_job_of
from weightport import demo
from weightport.catalog import sessions
from weightport.server.openapi import document

EXAMPLES = int(os.environ.get("WEIGHTPORT_CONTRACT_EXAMPLES", "25"))
CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
        "ignored_auth",
    )
)


@dataclass(frozen=True)
class Identity:
    name: str
    headers: tuple[str, ...]
    examples: int


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("contract") / "data").start()
    yield live
    live.stop()


def console_session(server: LiveServer, api_key: str) -> str:
    catalog = server.catalog()
    try:

        def run(session: Session) -> str:
            return sessions.start(session, api_key, 3600).token

        return catalog.call(run)
    finally:
        catalog.close()


def identities(server: LiveServer) -> list[Identity]:
    owner = server.admin_key
    other = server.new_account("contract-other")
    few = max(3, EXAMPLES // 3)
    return [
        Identity(
            "owner",
            (
                f"Authorization: Bearer {owner}",
                f"Cookie: wp_session={console_session(server, owner)}",
            ),
            EXAMPLES,
        ),
        Identity(
            "other-account",
            (
                f"Authorization: Bearer {other}",
                f"Cookie: wp_session={console_session(server, other)}",
            ),
            few,
        ),
        Identity("unknown-key", ("Authorization: Bearer wp_000000000000_unknown",), few),
        Identity("no-key", (), few),
    ]


def run_schemathesis(
    server: LiveServer, identity: Identity, workdir: Path
) -> subprocess.CompletedProcess[str]:
    schema = workdir / "openapi.json"
    schema.write_text(json.dumps(document()))
    # Real identifiers, so generated requests reach the handlers rather than a 404.
    config = workdir / "schemathesis.toml"
    config.write_text(
        "[parameters]\n"
        '"path.account" = "admin"\n'
        f'"path.model" = "{demo.DEMO_MODEL_ID}"\n'
        f'"path.model_id" = "{demo.DEMO_MODEL_ID}"\n'
        f'"path.ft_id" = "{demo_job_of(server)}"\n'
        '"path.namespace" = "admin"\n'
        f'"path.name" = "{demo.DEMO_MODEL_ID}"\n'
        '"path.revision" = "main"\n'
    )
    args = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color"]
    args += ["run", str(schema), "--url", server.base_url, "--checks", CHECKS]
    args += ["--max-examples", str(identity.examples), "--seed", "8", "--no-shrink"]
    args += ["--generation-database", "none"]
    for header in identity.headers:
        args += ["-H", header]
    return subprocess.run(args, capture_output=True, text=True, check=False, cwd=workdir)


@pytest.mark.slow
def test_contract_holds_for_every_identity(server: LiveServer, tmp_path: Path) -> None:
    for identity in identities(server):
        workdir = tmp_path / identity.name
        workdir.mkdir()
        done = run_schemathesis(server, identity, workdir)
        assert done.returncode == 0, f"{identity.name}:\n{done.stdout[-20000:]}"
        generated = re.search(r"(\d+) generated", done.stdout)
        assert generated is not None and int(generated.group(1)) > 0, done.stdout[-2000:]
        print(f"{identity.name}: {generated.group(0)} test cases")
    assert server.log_path is not None
    assert "Traceback" not in server.log_path.read_text()
