"""``weightport serve`` as a user meets it: a taken port, and a banner whose commands run."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.cli_helpers import clean_env, one_error_line, weightport
from tests.conftest import BANNER_START, KEY_PATTERN, LiveServer, free_port
from weightport import demo

#: A PATH without the virtualenv, as after ``make serve`` in a fresh shell.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize("how", ["flag", "env"])
def test_a_taken_port_is_one_line_and_nothing_else(tmp_path: Path, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        data = tmp_path / "data"
        args = ["--data-dir", str(data)] + (["--port", str(port)] if how == "flag" else [])
        env = clean_env(WEIGHTPORT_PORT=str(port)) if how == "env" else None
        result = weightport("serve", "--demo", *args, env=env, check=False)
    assert result.returncode == 1
    assert one_error_line(result) == (
        f"cannot listen on 127.0.0.1:{port}: address already in use; choose another port "
        "with --port N or WEIGHTPORT_PORT=N (0 picks a free one)"
    )
    assert result.stdout == ""
    assert not data.exists()  # bound first: nothing was set up for a server that cannot run


def banner_lines(server: LiveServer) -> list[str]:
    """The command lines (indented) of the banner the server printed last."""
    assert server.log_path is not None
    log = server.log_path.read_text()
    banner = log[log.rindex(BANNER_START) :]
    return [line.strip() for line in banner.splitlines() if line.startswith("    ")]


def run_as_printed(lines: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Paste ``lines`` into a fresh shell whose PATH lacks the virtualenv."""
    script = "set -e\n" + "\n".join(lines)
    env = clean_env(PATH=BARE_PATH)
    return subprocess.run(
        ["/bin/bash", "-c", script], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_printed_commands_run_as_printed(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", extra_env={"PATH": BARE_PATH}).start()
    lines = banner_lines(server)
    assert server.admin_key in lines  # the first start's key, shown once
    weightport_lines = [
        line for line in lines if " download " in line and not line.startswith(("together ", "hf "))
    ]
    curl = [line for line in lines if line.startswith("curl ")]
    assert len(weightport_lines) == 2 and len(curl) == 1
    first = tmp_path / "first"
    first.mkdir()
    ran = run_as_printed([f"{curl[0]} > endpoint.json", *weightport_lines], first)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "filenameToSignedUrls" in (first / "endpoint.json").read_text()
    assert {p.name for p in (first / "demo-llama").iterdir()} == set(demo.demo_base_files())
    assert (first / "demo-merged" / "config.json").is_file()

    # Later starts cannot show the key again: they print how to make one, and the
    # commands read it from the variable that line sets. Pasted elsewhere, all still run.
    server.restart()
    lines = banner_lines(server)
    assert not any(KEY_PATTERN.search(line) for line in lines)
    (make_key,) = [line for line in lines if line.startswith("export WEIGHTPORT_API_KEY=")]
    model_line = next(line for line in lines if " download model " in line)
    second = tmp_path / "second"
    second.mkdir()
    ran = run_as_printed([make_key, model_line], second)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert (second / "demo-llama" / "config.json").is_file()


def test_without_the_demo_the_banner_promises_no_demo(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False, port=free_port()).start()
    lines = banner_lines(server)
    assert not any(demo.DEMO_MODEL_ID in line or "ft-" in line for line in lines)
    listing = next(line for line in lines if " models list " in line)
    ran = run_as_printed([listing], tmp_path)
    assert ran.returncode == 0 and ran.stdout == "", ran.stderr
