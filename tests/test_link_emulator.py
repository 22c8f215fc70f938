"""The benchmarks' link emulator relays bytes exactly, late by its RTT, no faster than its cap.

Only lower bounds on time are checked: a slow machine can only make things later.
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from bench.link_emulator import MIN_CHUNK, Emulator, LinkProfile, check_profile, parse_rate


@contextmanager
def _echo_server() -> Iterator[int]:
    """Echo every byte back; close the write side when the client closes its own."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()
        thread.join()


@contextmanager
def _emulator(target: int, profile: LinkProfile) -> Iterator[Emulator]:
    emulator = Emulator(target, profile)
    thread = threading.Thread(target=emulator.serve, daemon=True)
    thread.start()
    try:
        yield emulator
    finally:
        emulator.stop()
        thread.join()


def _round_trip(port: int, payload: bytes) -> tuple[bytes, float, float]:
    """Send ``payload``, read the echo to its end: (echo, first byte at, last byte at)."""
    began = time.monotonic()
    first = 0.0
    received = bytearray()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        while len(received) < len(payload):
            data = sock.recv(65536)
            assert data, "the echo ended early"
            first = first or time.monotonic() - began
            received += data
        sender.join()
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the server's end of stream comes through
    return bytes(received), first, time.monotonic() - began


def test_bytes_come_back_exactly_after_the_handshake_and_one_round_trip() -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    profile = LinkProfile(rtt=0.05, rate=0.0)
    with _echo_server() as target, _emulator(target, profile) as emulator:
        echo, first, _ = _round_trip(emulator.port, payload)
    assert echo == payload
    assert first >= 2 * profile.rtt  # handshake + request/answer, as on a real path


def test_each_connection_is_held_to_its_rate() -> None:
    payload = os.urandom(400 * 1024)
    profile = LinkProfile(rtt=0.0, rate=2e6)
    with _echo_server() as target, _emulator(target, profile) as emulator:
        echo, _, last = _round_trip(emulator.port, payload)
    assert echo == payload
    # Out at 2 MB/s after one burst, back at 2 MB/s after another: pipelined, so at least
    # one direction's worth of time.
    assert last >= (len(payload) - 2 * profile.burst()) / profile.rate


def test_rates_and_profiles_are_checked() -> None:
    assert parse_rate("25M") == 25e6 and parse_rate("2.5g") == 2.5e9 and parse_rate("0") == 0
    with pytest.raises(argparse.ArgumentTypeError, match="not a rate"):
        parse_rate("fast")
    assert LinkProfile(0.04, 25e6).burst() == 100_000
    assert LinkProfile(0.0, 1e6).burst() == MIN_CHUNK
    with pytest.raises(SystemExit, match="exceed"):
        check_profile(LinkProfile(rtt=1.0, rate=1e9))  # 500 MB in flight: no pipe holds that
