"""Running the ``weightport`` command as a user does: a real process, a known environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

#: Variables that choose a server, key or account; tests start without any of them.
_CHOOSERS = ("WEIGHTPORT_", "FIREWORKS_", "TOGETHER_")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without WEIGHTPORT_*/FIREWORKS_*/TOGETHER_*, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_CHOOSERS)}
    return {**env, **extra}


def weightport(
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m weightport ARGS`` in a clean environment (or ``env``); asserts success."""
    result = subprocess.run(
        [sys.executable, "-m", "weightport", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env() if env is None else env,
        cwd=cwd,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``Error: ...`` line a failed command printed (and nothing else on stderr)."""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0].removeprefix("Error: ")
