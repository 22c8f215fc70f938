"""``serve --workers N``: N server processes on one machine sharing one listening socket.

``serve`` binds the socket; the supervisor starts each worker as ``weightport serve --listen-fd
FD`` with the socket inherited and every setting in its environment, so all workers serve
exactly the same configuration. The kernel hands each new connection to one worker. Workers
share nothing in memory: whatever must agree between them lives in the catalog and the
store, as it does between replicas on different machines.

With ``metrics_listen`` the metrics socket is shared the same way. The workers write their
metrics into one directory (``PROMETHEUS_MULTIPROC_DIR``: a fresh temporary one unless the
environment names one), so whichever worker answers a scrape reports all of them.

SIGINT and SIGTERM stop every worker (each finishes its downloads in flight first, up to
``shutdown_grace`` seconds). A worker that dies is started again; one that keeps dying
within :data:`QUICK_EXIT` seconds of its start stops the whole server with an error.
A worker whose supervisor disappears stops by itself (see ``serve``'s worker mode).
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from weightport.config import Settings, settings_env
from weightport.observability.exposition import (
    MULTIPROCESS_ENV,
    forget_worker,
    multiprocess_dir,
)

log = logging.getLogger("weightport.supervisor")

#: Seconds a worker gets past ``shutdown_grace`` to exit before it is killed.
STOP_MARGIN = 5.0
QUICK_EXIT = 5.0
#: Worker deaths within QUICK_EXIT of their start, in a row, before giving up.
MAX_QUICK_EXITS = 5


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    """Starts, watches and stops the workers."""

    def __init__(
        self, settings: Settings, sock: socket.socket, metrics_sock: socket.socket | None = None
    ) -> None:
        self.settings = settings
        self.sock = sock
        self.metrics_sock = metrics_sock
        # Children inherit them by number (pass_fds), so they must survive exec.
        sock.set_inheritable(True)
        if metrics_sock is not None:
            metrics_sock.set_inheritable(True)
        # The workers' own grace for downloads in flight, and a little to exit after it.
        self.stop_grace = settings.shutdown_grace + STOP_MARGIN
        given = multiprocess_dir()
        self._own_metrics_dir = given is None
        self.metrics_dir = given or Path(tempfile.mkdtemp(prefix="weightport-metrics-"))
        self.workers: list[_Worker] = []
        self._stopping = False
        self._quick_exits = 0

    def _spawn(self, index: int) -> _Worker:
        env = {**os.environ, **settings_env(self.settings), "PYTHONUNBUFFERED": "1"}
        env[MULTIPROCESS_ENV] = str(self.metrics_dir)
        fds = [self.sock.fileno()]
        args = [sys.executable, "-m", "weightport", "serve", "--listen-fd", str(fds[0])]
        if self.metrics_sock is not None:
            fds.append(self.metrics_sock.fileno())
            args += ["--metrics-fd", str(fds[1])]
        # Our pid, not the child's getppid() at its start: we may be dead by then.
        args += ["--supervisor-pid", str(os.getpid())]
        process = subprocess.Popen(args, env=env, pass_fds=fds)  # noqa: S603 (our own argv)
        log.info("worker %d started (pid %d)", index, process.pid)
        return _Worker(index, process)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Run until told to stop; returns the exit status for the command."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            self.workers = [self._spawn(i) for i in range(self.settings.workers)]
            while not self._stopping:
                time.sleep(0.2)
                if not self._replace_dead():
                    return 1
            return 0
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
            if self.metrics_sock is not None:
                self.metrics_sock.close()
            if self._own_metrics_dir:
                shutil.rmtree(self.metrics_dir, ignore_errors=True)

    def _replace_dead(self) -> bool:
        """Restart workers that exited; False once they keep dying right after start."""
        for slot, worker in enumerate(self.workers):
            code = worker.process.poll()
            if code is None or self._stopping:
                continue
            forget_worker(worker.process.pid, self.metrics_dir)
            quick = time.monotonic() - worker.started < QUICK_EXIT
            self._quick_exits = self._quick_exits + 1 if quick else 0
            if self._quick_exits >= MAX_QUICK_EXITS:
                click.echo(
                    f"Error: workers keep exiting right after they start (last status {code}); "
                    "stopping. See the log above for why.",
                    err=True,
                )
                return False
            log.warning(
                "worker %d (pid %d) exited with status %s; restarting it",
                worker.index,
                worker.process.pid,
                code,
            )
            self.workers[slot] = self._spawn(worker.index)
        return True

    def _stop_all(self) -> None:
        for worker in self.workers:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.stop_grace
        for worker in self.workers:
            try:
                worker.process.wait(max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                log.warning(
                    "worker %d did not stop in %g s; killing it", worker.index, self.stop_grace
                )
                worker.process.kill()
                worker.process.wait()
