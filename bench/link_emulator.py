"""A userspace link emulator: a TCP proxy on 127.0.0.1 that behaves like a long internet path.

There is no kernel ``netem`` on these machines, so the benchmarks put this between a client
and a server on loopback. Each accepted connection gets its own emulated path:

- **delay**: every byte (and the end of the stream) is held for ``rtt / 2`` in each
  direction, so a request and its answer cost one RTT. The client's first bytes also wait
  one extra RTT, the TCP handshake a real path charges before anything can be sent (the
  kernel completes the handshake with the proxy at once, so the proxy charges it instead);
- **bandwidth**: a token bucket per connection and direction caps it at ``rate`` bytes/s,
  the way a per-flow shaper or a CDN's per-connection limit does. Bytes are admitted at the
  rate and then delayed, which is what serialisation onto a slow link followed by
  propagation looks like at the far end.

It must never be what limits a benchmark, so bytes never enter Python: they move socket ->
pipe -> socket with ``splice(2)``, and the pipe *is* the delay line (a FIFO, with a deque of
(release time, bytes) beside it). One thread runs an edge-triggered ``epoll`` loop; it wakes
for socket events, for the next release time and for the next token refill, and moves at
least :data:`MIN_CHUNK` bytes per wakeup when throttled. ``--rtt-ms 0 --rate 0`` relays
without limits, to measure the proxy's own ceiling (BENCHMARKS.md reports it and its CPU).

Run it as its own process, so its CPU is its own::

    python -m bench.link_emulator --target PORT [--port 0] [--rtt-ms 40] [--rate 25M]

It prints ``listening on PORT`` once ready and serves until SIGTERM/SIGINT; :class:`LinkEmulator`
does that from Python.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import errno
import fcntl
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

#: Fewest bytes a throttled lane waits for before it is served again: fewer, larger splices
#: (64 KiB at 25 MB/s is 2.6 ms of the link, far below one RTT).
MIN_CHUNK = 64 * 1024
#: Wakeups this close together are merged (epoll's resolution is 1 ms anyway).
SLACK = 0.0005
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: Longest poll while connections are open (seconds).
TICK = 0.05
_EPOLL_MASK = select.EPOLLIN | select.EPOLLOUT | select.EPOLLRDHUP | select.EPOLLET
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMG]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}


@dataclass(frozen=True)
class LinkProfile:
    """One emulated path: round-trip time (seconds) and per-connection rate (bytes/s, 0: none)."""

    rtt: float
    rate: float

    @property
    def one_way(self) -> float:
        return self.rtt / 2

    def in_flight(self) -> int:
        """Bytes one direction holds at most: a one-way delay's worth plus one burst."""
        return int(self.rate * self.one_way) + 2 * self.burst()

    def burst(self) -> int:
        """Token bucket depth: 4 ms of the rate, at least :data:`MIN_CHUNK`."""
        return max(MIN_CHUNK, int(self.rate * 0.004))

    def describe(self) -> str:
        rate = f"{self.rate / 1e6:g} MB/s per connection" if self.rate else "no rate cap"
        return f"RTT {self.rtt * 1000:g} ms, {rate}"


class Lane:
    """One direction of one connection: ``src`` socket -> pipe (delay line) -> ``dst`` socket."""

    def __init__(
        self, src: socket.socket, dst: socket.socket, profile: LinkProfile, not_before: float
    ) -> None:
        self.src_sock = src
        self.dst_sock = dst
        self.src = src.fileno()
        self.dst = dst.fileno()
        self.profile = profile
        self.not_before = not_before  # nothing leaves before this (the handshake, upstream)
        self.pipe_r, self.pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_SETPIPE_SZ, pipe_max_size())
        self.segments: collections.deque[tuple[float, int]] = collections.deque()
        self.in_pipe = 0
        self.releasable = 0
        self.tokens = float(MIN_CHUNK)
        self.refilled = time.monotonic()
        self.readable = False
        self.writable = True
        self.src_eof = False
        self.eof_due = False  # the end of the stream is due at the far side
        self.done = False  # ... and has been delivered
        self.pipe_full = False
        self.moved = 0

    def pump(self, now: float) -> None:
        """Deliver what is due, then admit what the bucket allows."""
        self._release(now)
        self._admit(now)

    def _release(self, now: float) -> None:
        segments = self.segments
        horizon = now + SLACK
        while segments and segments[0][0] <= horizon:
            _, n = segments.popleft()
            if n == 0:
                self.eof_due = True
            self.releasable += n
        while self.releasable and self.writable:
            try:
                n = os.splice(self.pipe_r, self.dst, self.releasable, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                self.writable = False
                return
            self.releasable -= n
            self.in_pipe -= n
            self.moved += n
            self.pipe_full = False
        if self.eof_due and not self.releasable and self.in_pipe == 0:
            self.eof_due = False
            self.done = True
            with contextlib.suppress(OSError):
                self.dst_sock.shutdown(socket.SHUT_WR)

    def _admit(self, now: float) -> None:
        if self.src_eof or not self.readable or self.pipe_full:
            return
        rate = self.profile.rate
        if rate > 0:
            burst = self.profile.burst()
            self.tokens = min(burst, self.tokens + (now - self.refilled) * rate)
            self.refilled = now
        while self.readable:
            room = self.capacity - self.in_pipe
            want = min(room, int(self.tokens)) if rate > 0 else room
            if want <= 0 or (rate > 0 and want < MIN_CHUNK and room >= MIN_CHUNK):
                self.pipe_full = room <= 0
                return
            try:
                n = os.splice(self.src, self.pipe_w, want, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # Either the socket is drained or the pipe has no free slots left.
                self.readable = _has_data(self.src_sock)
                # Full only if the pipe holds bytes: an empty one is retried on the next tick.
                self.pipe_full = self.readable and self.in_pipe > 0
                return
            except OSError as exc:
                if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                    raise
                n = 0
            when = max(now, self.not_before) + self.profile.one_way
            if n == 0:
                self.src_eof = True
                self.readable = False
                self.segments.append((when, 0))
                return
            if rate > 0:
                self.tokens -= n
            self.in_pipe += n
            if self.segments and self.segments[-1][0] == when:
                self.segments[-1] = (when, self.segments[-1][1] + n)
            else:
                self.segments.append((when, n))

    def next_wakeup(self) -> float | None:
        """When this lane next has something to do without a socket event."""
        due = self.segments[0][0] if self.segments else None
        if self.readable and not self.pipe_full and not self.src_eof and self.profile.rate > 0:
            short = MIN_CHUNK - self.tokens
            refill = self.refilled + max(0.0, short) / self.profile.rate
            due = refill if due is None else min(due, refill)
        return due

    def close(self) -> None:
        os.close(self.pipe_r)
        os.close(self.pipe_w)


def pipe_max_size() -> int:
    """The largest pipe this process may make (``/proc/sys/fs/pipe-max-size``, 1 MiB here)."""
    try:
        return int(Path("/proc/sys/fs/pipe-max-size").read_text())
    except (OSError, ValueError):
        return 1 << 20


def check_profile(profile: LinkProfile) -> None:
    """Refuse a path whose bytes in flight do not fit one pipe (the delay line)."""
    if profile.in_flight() > pipe_max_size():
        raise SystemExit(
            f"{profile.describe()}: {profile.in_flight()} bytes in flight one way exceed the "
            f"{pipe_max_size()}-byte pipe that holds them (lower the rate or the RTT)"
        )


def _has_data(sock: socket.socket) -> bool:
    """Whether the socket still has unread bytes (a splice that failed for lack of pipe room)."""
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False
    except OSError:
        return True  # an error or EOF is still something for the next splice to see


class Connection:
    """A client socket, its upstream socket and the two lanes between them."""

    def __init__(self, client: socket.socket, upstream: socket.socket, profile: LinkProfile):
        now = time.monotonic()
        self.client = client
        self.upstream = upstream
        self.up = Lane(client, upstream, profile, now + profile.rtt)
        self.down = Lane(upstream, client, profile, 0.0)

    @property
    def finished(self) -> bool:
        return self.up.done and self.down.done

    def close(self) -> None:
        for lane in (self.up, self.down):
            lane.close()
        for sock in (self.client, self.upstream):
            sock.close()


class Emulator:
    """The event loop: accept, connect upstream, pump every lane on events and timers."""

    def __init__(self, target_port: int, profile: LinkProfile, port: int = 0) -> None:
        self.target_port = target_port
        self.profile = profile
        self.listener = socket.create_server(("127.0.0.1", port), backlog=512)
        self.listener.setblocking(False)
        self.port = int(self.listener.getsockname()[1])
        self.epoll = select.epoll()
        self.epoll.register(self.listener.fileno(), select.EPOLLIN)
        # A signal only sets a flag; this pipe wakes the loop so that it sees the flag.
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.epoll.register(self.wake_r, select.EPOLLIN)
        self.by_fd: dict[int, Connection] = {}
        self.connections: set[Connection] = set()
        self.running = True
        # stop() may come from another thread just as serve() ends and closes the wake pipe:
        # the lock orders the two (re-entrant, for stop() from a signal handler on serve's thread).
        self._closing = threading.RLock()
        self._closed = False
        self.moved = 0

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except BlockingIOError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                client.close()
                continue
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = Connection(client, upstream, self.profile)
            self.connections.add(conn)
            for sock in (client, upstream):
                self.by_fd[sock.fileno()] = conn
                self.epoll.register(sock.fileno(), _EPOLL_MASK)

    def _event(self, fd: int, mask: int) -> None:
        conn = self.by_fd.get(fd)
        if conn is None:
            return
        for lane in (conn.up, conn.down):
            if lane.src == fd and mask & (select.EPOLLIN | select.EPOLLRDHUP | select.EPOLLHUP):
                lane.readable = True
            if lane.dst == fd and mask & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                lane.writable = True

    def _drop(self, conn: Connection) -> None:
        for sock in (conn.client, conn.upstream):
            fd = sock.fileno()
            self.by_fd.pop(fd, None)
            with contextlib.suppress(OSError):
                self.epoll.unregister(fd)
        self.moved += conn.up.moved + conn.down.moved
        self.connections.discard(conn)
        conn.close()

    def serve(self) -> None:
        """Run until :meth:`stop` (a signal handler) clears ``running``."""
        due: float | None = None
        while self.running:
            now = time.monotonic()
            timeout = None if due is None else max(0.0, due - now)
            if self.connections:
                # A tick while connections are open: a wake-up lost between an edge-triggered
                # event and a splice that answered EAGAIN costs 50 ms, not a stalled transfer.
                timeout = TICK if timeout is None else min(timeout, TICK)
            try:
                events = self.epoll.poll(timeout)
            except InterruptedError:
                continue
            for fd, mask in events:
                if fd == self.listener.fileno():
                    self._accept()
                elif fd == self.wake_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self.wake_r, 4096)
                else:
                    self._event(fd, mask)
            now = time.monotonic()
            due = None
            for conn in list(self.connections):
                try:
                    conn.up.pump(now)
                    conn.down.pump(now)
                except OSError:  # a reset mid-splice: that connection is over
                    self._drop(conn)
                    continue
                if conn.finished:
                    self._drop(conn)
                    continue
                for lane in (conn.up, conn.down):
                    when = lane.next_wakeup()
                    if when is not None and (due is None or when < due):
                        due = when
        for conn in list(self.connections):
            self._drop(conn)
        self.listener.close()
        self.epoll.close()
        with self._closing:
            self._closed = True
            os.close(self.wake_r)
            os.close(self.wake_w)

    def stop(self, *_: object) -> None:
        """End :meth:`serve` (from a signal handler or another thread)."""
        with self._closing:
            self.running = False
            if not self._closed:
                with contextlib.suppress(BlockingIOError):
                    os.write(self.wake_w, b"x")


def parse_rate(text: str) -> float:
    """``25M`` / ``2.5G`` / ``800K`` / plain bytes per second (decimal units); 0: no cap."""
    match = _SIZE.match(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate (e.g. 25M for 25 MB/s)")
    return float(match[1]) * _UNITS[match[2].lower()]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.link_emulator", description=__doc__)
    parser.add_argument("--target", type=int, required=True, help="port on 127.0.0.1 to relay to")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--rtt-ms", type=float, default=40.0, help="round-trip time to add")
    parser.add_argument(
        "--rate", type=parse_rate, default=25e6, help="bytes/s per connection and direction"
    )
    args = parser.parse_args(argv)
    profile = LinkProfile(args.rtt_ms / 1000, args.rate)
    check_profile(profile)
    emulator = Emulator(args.target, profile, args.port)
    signal.signal(signal.SIGTERM, emulator.stop)
    signal.signal(signal.SIGINT, emulator.stop)
    print(f"listening on {emulator.port}", flush=True)
    emulator.serve()


class LinkEmulator:
    """``python -m bench.link_emulator`` as a child process (its CPU is read by pid)."""

    def __init__(self, target_port: int, profile: LinkProfile, log: Path) -> None:
        self.target_port = target_port
        self.profile = profile
        self.log = log
        self.port = 0
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the link emulator is not running")
        return self.process.pid

    def rewrite(self, url: str, server_port: int) -> str:
        """``url`` pointed at the emulator instead of the server on ``server_port``."""
        return url.replace(f"127.0.0.1:{server_port}", f"127.0.0.1:{self.port}", 1)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> LinkEmulator:
        args = [sys.executable, "-m", "bench.link_emulator", "--target", str(self.target_port)]
        args += ["--rtt-ms", str(self.profile.rtt * 1000), "--rate", str(self.profile.rate)]
        root = Path(__file__).resolve().parent.parent
        with self.log.open("a") as err:
            self.process = subprocess.Popen(
                args, stdout=subprocess.PIPE, stderr=err, text=True, cwd=root
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.match(r"listening on (\d+)", line)
        if match is None:
            self.process.kill()
            raise RuntimeError(f"the link emulator did not start: {self.log.read_text()[-2000:]}")
        self.port = int(match[1])
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


if __name__ == "__main__":
    main()
