"""The benchmark harness's server wrapper leaves no server running when its start fails."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from bench.servers import WeightportServer


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def test_a_failed_start_stops_the_server_it_spawned(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = WeightportServer(data).start()  # a first start creates the admin and prints its key
    first.stop()
    first.log_path.unlink()
    # A second start on the same data directory prints no key: the wrapper's start fails
    # after its server is up and listening, and must not leave that server running.
    second = WeightportServer(data, key_wait_s=0.5)
    try:
        with pytest.raises(RuntimeError, match="no admin key"):
            second.start()
        assert second.process is None
        assert not _listening(second.port)
    finally:
        second.stop()  # should this test fail, it leaves no server behind either
