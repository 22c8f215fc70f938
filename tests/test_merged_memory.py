"""Merged downloads through a real ``weightport serve`` process: several at once give the right
bytes, and clients that lag and then hang up leave the server's memory where it was."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import zstandard

from tests.conftest import LiveServer
from tests.merge_fixtures import adapter_files, bf16, memory_sources, reference_shard
from tests.merge_fixtures import safetensors_bytes as safetensors

RNG = np.random.default_rng(13)
P = "base_model.model.model.layers.0"


def _model() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """A base of two 2048 x 4096 bf16 weights (32 MiB) and a rank-8 adapter on both."""
    shapes = {"self_attn.q_proj": (2048, 4096), "mlp.up_proj": (4096, 2048)}
    weights = {
        f"model.layers.0.{name}.weight": (
            "BF16",
            bf16(RNG.standard_normal(shape, dtype=np.float32) * np.float32(0.02)),
        )
        for name, shape in shapes.items()
    }
    factors: dict[str, tuple[str, np.ndarray]] = {}
    for name, (rows, cols) in shapes.items():
        factors[f"{P}.{name}.lora_A.weight"] = ("F32", RNG.standard_normal((8, cols), np.float32))
        factors[f"{P}.{name}.lora_B.weight"] = ("F32", RNG.standard_normal((rows, 8), np.float32))
    base = {"config.json": b'{"model_type": "llama"}', "model.safetensors": safetensors(weights)}
    config = {
        "peft_type": "LORA",
        "r": 8,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "up_proj"],
    }
    return base, adapter_files(config, factors)


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def _weightport(server: LiveServer, *args: str) -> str:
    env = {"WEIGHTPORT_BASE_URL": server.base_url, "WEIGHTPORT_API_KEY": server.admin_key}
    done = subprocess.run(
        [sys.executable, "-m", "weightport", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _settled_rss(pid: int) -> float:
    """The server's RSS once it stays within 1 MiB over half a second (at most ~10 s)."""
    rss = _rss_mib(pid)
    for _ in range(20):
        time.sleep(0.5)
        now = _rss_mib(pid)
        if abs(now - rss) < 1:
            return now
        rss = now
    return rss


def _merged_member(archive: bytes) -> bytes:
    reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(archive))
    with tarfile.open(fileobj=reader, mode="r|") as tar:
        for member in tar:
            if member.name.endswith("/model.safetensors"):
                data = tar.extractfile(member)
                assert data is not None
                return data.read()
    raise AssertionError("no model.safetensors in the archive")


def test_concurrent_merged_downloads_and_hang_ups(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "data", demo=False).start()
    assert server.process is not None
    base, adapter = _model()
    _weightport(server, "models", "push", str(_write(tmp_path / "base", base)), "--model", "base")
    ft_id = _weightport(
        server,
        "finetunes",
        "import",
        "--data-dir",
        str(server.data_dir),
        "--base-model",
        "base",
        "--final",
        f"1={_write(tmp_path / 'adapter', adapter)}",
    ).split()[-1]
    path = f"/v1/finetune/download?ft_id={ft_id}&checkpoint=merged"
    url = server.base_url + path
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    expected = reference_shard(memory_sources(base), memory_sources(adapter), "model.safetensors")

    # Three at once, through the shared read-ahead pool: each one the exact merged bytes.
    bodies: list[bytes] = []

    def fetch() -> None:
        with httpx.Client(timeout=None) as client:
            bodies.append(client.get(url, headers=headers).content)

    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(bodies) == 3 and len(set(bodies)) == 1
    assert _merged_member(bodies[0]) == expected

    # Three clients that stop reading, then hang up: their read-ahead must not stay behind.
    pid = server.process.pid
    before = _settled_rss(pid)
    socks = []
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        auth = f"Authorization: {headers['Authorization']}\r\n"
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n{auth}\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        socks.append(sock)
    lagging = _settled_rss(pid)
    for sock in socks:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    after = _settled_rss(pid)
    # Each lagging response held its ring of chunk buffers (window + 2 = 6 MiB)...
    assert lagging - before >= 3 * 4, (before, lagging, after)
    # ...and gave it back to the operating system when its client went away (what is left
    # is the transports' own copies of unsent data, freed but kept by the allocator).
    assert after - before <= 8, (before, lagging, after)
    # The server is fine afterwards.
    assert httpx.get(url, headers={**headers, "Range": "bytes=0-1"}).status_code == 206
