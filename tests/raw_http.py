"""HTTP/1.1 by hand over a raw socket: for what real clients never send (split bodies with
pauses, odd request lines, ``Expect: 100-continue`` without ever sending the body)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: Guards against a server that never answers; tests never rely on it firing.
HANG_GUARD_S = 60.0


@dataclass(frozen=True)
class RawResponse:
    """Everything the server sent: interim (1xx) status lines, then the final answer."""

    interim: list[str]
    status_line: str
    headers: dict[str, str]
    body: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def json(self) -> Any:
        return json.loads(self.body)


def request_head(
    method: str, path: str, headers: dict[str, str] | None = None, *, version: str = "HTTP/1.1"
) -> bytes:
    """A request line and headers (``Host`` and ``Connection: close`` added), ending in CRLF."""
    lines = [f"{method} {path} {version}", "Host: 127.0.0.1", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class ResponseReader:
    """Reads responses off one connection as they come (interim 1xx ones included)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response after {self.buffer[:200]!r}")
        self.buffer += chunk

    def next_head(self) -> tuple[str, dict[str, str]]:
        """The next status line and headers (interim or final)."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return status_line, headers

    def response(self) -> RawResponse:
        """The next final response, with the interim ones before it."""
        interim: list[str] = []
        while True:
            status_line, headers = self.next_head()
            if status_line.split()[1].startswith("1"):
                interim.append(status_line)
                continue
            length = int(headers.get("content-length", "0"))
            while len(self.buffer) < length:
                self._fill()
            body, self.buffer = self.buffer[:length], self.buffer[length:]
            return RawResponse(interim, status_line, headers, body)


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(HANG_GUARD_S)
    # One segment per sendall, so a pause between pieces really splits the body.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exchange(port: int, pieces: Sequence[bytes], *, pause_s: float = 0.0) -> RawResponse:
    """Send ``pieces`` one at a time, pausing between them, then read the whole answer."""
    with connect(port) as sock:
        for index, piece in enumerate(pieces):
            if index and pause_s:
                time.sleep(pause_s)
            try:
                sock.sendall(piece)
            except (BrokenPipeError, ConnectionResetError):
                break  # the server answered early and stopped reading; read what it said
        return ResponseReader(sock).response()
