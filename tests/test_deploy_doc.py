"""docs/deploy.md stays true: its settings table is the code's, and its walk-through runs.

The walk-through's shell blocks are run as written, in order, in one bash with ``set -euo
pipefail``, with every port it names set to a free one; its last block ("Stop everything")
runs on exit whatever happened.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.seaweedfs import _free_ports
from weightport.config import documented_settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "deploy.md"
SH_BLOCK = re.compile(r"^```sh\n(.*?)^```", re.M | re.S)


def settings_table() -> str:
    """The settings table deploy.md must contain, generated from the code."""
    rows = ["| setting | environment | default | meaning |", "|---|---|---|---|"]
    for setting in documented_settings():
        default = f"`{setting.default}`" if setting.default else "(empty)"
        rows.append(f"| `{setting.name}` | `{setting.env}` | {default} | {setting.help} |")
    return "\n".join(rows)


def test_the_settings_table_is_the_codes() -> None:
    expected = settings_table()
    assert expected in DOC.read_text(), f"replace the table in docs/deploy.md with:\n{expected}"


def walkthrough_blocks() -> list[str]:
    text = DOC.read_text()
    section = text[text.index("## Walk-through") :]
    return SH_BLOCK.findall(section)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_walkthrough_runs(tmp_path: Path) -> None:
    *steps, stop = walkthrough_blocks()
    assert len(steps) >= 5 and "rm -rf" in stop
    # /tmp, not pytest's private tmp_path: the postgres user must reach the cluster's folder.
    home = Path(tempfile.mkdtemp(prefix="weightport-walkthrough-"))
    master, volume, filer, s3 = _free_ports(4)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "WP_HOME": str(home),
        "PG_PORT": str(_free_port()),
        "S3_PORT": str(s3),
        "WEED_MASTER_PORT": str(master),
        "WEED_VOLUME_PORT": str(volume),
        "WEED_FILER_PORT": str(filer),
        "BALANCER_PORT": str(_free_port()),
        "REPLICA_1_PORT": str(_free_port()),
        "REPLICA_2_PORT": str(_free_port()),
    }
    for name in list(env):
        if name.startswith(("WEIGHTPORT_", "AWS_")):
            del env[name]
    script = "\n".join(
        [
            "set -euo pipefail",
            # On failure, show the logs before "Stop everything" deletes them.
            'stop() { status=$?; set +eu; if [ "$status" -ne 0 ]; then',
            '  for log in "$WP_HOME"/*.log "$WP_HOME"/*/*.log; do',
            '    [ -f "$log" ] && { echo "== $log"; tail -n 25 "$log"; }; done; fi',
            stop,
            "}",
            "trap stop EXIT",
            *steps,
        ]
    )
    (tmp_path / "walkthrough.sh").write_text(script)
    done = subprocess.run(
        ["bash", str(tmp_path / "walkthrough.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    assert not home.exists(), "the walk-through's last step removes everything"
    assert not _processes_mentioning(str(home)), "the walk-through's last step stops everything"


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found
