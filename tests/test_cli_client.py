"""The client commands (``models``, ``download``) as a user runs them: one server by default
(the local one), one name per option, one error path (one line, an exit status)."""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.cli_helpers import clean_env, one_error_line, weightport
from tests.conftest import LiveServer
from weightport import demo
from weightport.client.sources import DEFAULT_ACCOUNT, LOCAL_BASE_URL
from weightport.config import Settings

#: Every client command, with arguments that are valid short of a server.
CLIENT_COMMANDS = [
    ("models", "list"),
    ("models", "push", ".", "--model", "m"),
    ("download", "model", "demo-llama"),
    ("download", "finetune", "ft-0"),
]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_local_default_is_where_serve_listens() -> None:
    assert f"http://{Settings.host}:{Settings.port}" == LOCAL_BASE_URL


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
def test_an_unreachable_server_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    url = f"http://127.0.0.1:{closed_port()}"
    result = weightport(*command, "--base-url", url, "--api-key", "k", check=False, cwd=tmp_path)
    assert result.returncode == 1
    assert one_error_line(result) == f"cannot reach {url}: Connection refused"
    assert result.stdout == ""


@pytest.mark.parametrize("command", CLIENT_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    "env",
    [{}, {"FIREWORKS_API_KEY": "fw-secret", "TOGETHER_API_KEY": "tg-secret"}],
    ids=["no-env", "vendor-keys"],
)
def test_without_a_key_every_command_says_the_same_about_the_local_server(
    command: tuple[str, ...], env: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "config.json").write_text("{}")
    result = weightport(*command, check=False, env=clean_env(**env), cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result) == (
        f"no API key for {LOCAL_BASE_URL}: pass --api-key or set WEIGHTPORT_API_KEY"
    )


def test_with_no_flags_download_goes_to_the_local_server(tmp_path: Path) -> None:
    """In a network namespace of its own (so port 8700 is free): serve with its defaults,
    then download with nothing but a key, from another folder."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip("needs unshare and ip (util-linux, iproute2)")
    script = textwrap.dedent(
        f"""
        import subprocess, sys
        from pathlib import Path
        from tests.cli_helpers import clean_env, weightport
        from tests.conftest import LiveServer
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        server = LiveServer(Path({str(tmp_path / "data")!r}), port={Settings.port}).start()
        try:
            env = clean_env(WEIGHTPORT_API_KEY=server.admin_key)
            result = weightport("download", "model", {demo.DEMO_MODEL_ID!r}, "--quiet",
                                env=env, cwd=Path({str(tmp_path)!r}), check=False)
            sys.stdout.write(result.stdout + result.stderr)
            sys.exit(result.returncode)
        finally:
            server.stop()
        """
    )
    repo = Path(__file__).resolve().parents[1]
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=repo,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    expected = demo.demo_base_files()
    got = {p.relative_to(tmp_path / demo.DEMO_MODEL_ID).as_posix()
           for p in (tmp_path / demo.DEMO_MODEL_ID).rglob("*") if p.is_file()}  # fmt: skip
    assert got == set(expected)


def test_one_account_name_across_commands(live_server: LiveServer, tmp_path: Path) -> None:
    """WEIGHTPORT_ACCOUNT / _BASE_URL / _API_KEY drive push, list and download alike."""
    account = f"env-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}')
    env = clean_env(
        WEIGHTPORT_BASE_URL=live_server.base_url,
        WEIGHTPORT_API_KEY=key,
        WEIGHTPORT_ACCOUNT=account,
    )
    pushed = weightport("models", "push", str(folder), "--model", "m1", "--quiet", env=env)
    assert f"accounts/{account}/models/m1 READY" in pushed.stdout
    listed = weightport("models", "list", env=env).stdout
    assert listed.startswith(f"accounts/{account}/models/m1\tREADY")
    weightport("download", "model", "m1", "-o", str(tmp_path / "out"), "--quiet", env=env)
    assert (tmp_path / "out" / "config.json").read_text() == '{"model_type": "llama"}'
    # A flag that disagrees with an account spelled in the name is refused, not guessed.
    clash = weightport("download", "model", f"{DEFAULT_ACCOUNT}/m1", "--account", account,
                       env=env, check=False)  # fmt: skip
    assert clash.returncode == 2 and "is not in account" in one_error_line(clash)


def test_vendor_variables_travel_as_a_pair(live_server: LiveServer, tmp_path: Path) -> None:
    """FIREWORKS_BASE_URL with its own key: the weightport key in the environment is not
    sent there, and a vendor key is never sent to the weightport server."""
    account = f"fw-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    env = clean_env(
        FIREWORKS_BASE_URL=live_server.base_url,
        FIREWORKS_API_KEY=key,
        FIREWORKS_ACCOUNT_ID=account,
        WEIGHTPORT_API_KEY="wp_not-for-this-server",
    )
    assert weightport("models", "list", env=env).stdout == ""  # the account has no models
    env["WEIGHTPORT_BASE_URL"] = live_server.base_url  # now weightport's own pair applies
    refused = weightport("models", "list", env=env, check=False)
    assert refused.returncode == 1 and "HTTP 401" in one_error_line(refused)


def test_the_download_command_loads_no_server_code() -> None:
    code = (
        "import sys, weightport.cli.download\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('sqlalchemy', 'alembic', "
        "'aiohttp') or m.split('.')[:2] in (['weightport', 'server'], ['weightport', 'catalog']))\n"
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
