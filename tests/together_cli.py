"""Running the unmodified together 3.x CLI against a test server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import LiveServer

CLI = shutil.which("together", path=str(Path(sys.executable).parent)) or "together"


def cli_env(server: LiveServer, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HOME": str(home),
        "TOGETHER_BASE_URL": server.base_url,
        "TOGETHER_API_KEY": server.admin_key,
        "TOGETHER_TELEMETRY_DISABLED": "1",
        "TOGETHER_DISABLE_VERSION_CHECK": "1",
        "NO_COLOR": "1",
    }


def run_cli(server: LiveServer, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CLI, "fine-tuning", "download", *args],
        env=cli_env(server, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
