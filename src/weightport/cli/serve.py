"""``weightport serve``: run the server on this machine, as one process or ``--workers N``.

Start-up work happens once, in the process the operator started, under the catalog's
start-up lock: migrations, the first admin key, the demo seed, store housekeeping. Then that
process serves, or (with ``--workers``) supervises N worker processes on its listening socket
(:mod:`weightport.cli.supervisor`), each a full server that skips the start-up work.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import click
from aiohttp import web

from weightport.cli.banner import ServeFacts, banner, weightport_command
from weightport.cli.catalog import reported, settings_from
from weightport.cli.first_start import bootstrap_admin, seed_demo
from weightport.cli.options import data_options
from weightport.cli.supervisor import Supervisor
from weightport.config import Settings, parse_listen
from weightport.server import metrics_endpoint
from weightport.server.app import build_context, create_app
from weightport.server.observe import configure_access_log

#: What to change when the main address cannot be bound.
_MAIN_HINTS = (
    "check --host / WEIGHTPORT_HOST",
    "choose another port with --port N or WEIGHTPORT_PORT=N (0 picks a free one)",
)
_METRICS_HINTS = (
    "check the host of metrics_listen / WEIGHTPORT_METRICS_LISTEN",
    "choose another port in metrics_listen / WEIGHTPORT_METRICS_LISTEN (HOST:0 picks a free one)",
)


def listen(host: str, port: int, hints: tuple[str, str] = _MAIN_HINTS) -> socket.socket:
    """A listening socket on host:port, or one line saying why not and what to change
    (``hints``: what to check about the host, how to choose another port).

    Bound before anything else happens, so a taken port fails at once, not after the
    catalog was opened and the demo seeded.
    """
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    check_host, other_port = hints
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        return socket.create_server((host, port), family=family)
    except socket.gaierror as exc:
        reason, hint = exc.strerror, check_host
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            reason, hint = "address already in use", other_port
        else:
            # Not exc.strerror: create_server appends the address to it, said once already.
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            hint = check_host if exc.errno == errno.EADDRNOTAVAIL else other_port
    raise click.ClickException(f"cannot listen on {address}: {reason}; {hint}")


@click.command("serve")
@click.option("--host", default=None, help="Address to bind [env WEIGHTPORT_HOST; 127.0.0.1].")
@click.option("--port", type=int, default=None, help="Port [env WEIGHTPORT_PORT; 8700].")
@click.option(
    "--public-url",
    default=None,
    help="URL clients reach this server at, for signed URLs [default: from each request].",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Server processes sharing the port [env WEIGHTPORT_WORKERS; 1].",
)
@click.option("--listen-fd", type=int, default=None, hidden=True)
@click.option("--metrics-fd", type=int, default=None, hidden=True)
@click.option("--supervisor-pid", type=int, default=None, hidden=True)
@click.option(
    "--demo/--no-demo",
    "seed",
    default=None,
    help="Seed the demo model and fine-tune [env WEIGHTPORT_SEED_DEMO; off].",
)
@data_options
def serve_command(
    host: str | None,
    port: int | None,
    public_url: str | None,
    workers: int | None,
    listen_fd: int | None,
    metrics_fd: int | None,
    supervisor_pid: int | None,
    seed: bool | None,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Run the weightport server (binds 127.0.0.1 unless told otherwise)."""
    settings = settings_from(
        host=host,
        port=port,
        public_url=public_url,
        workers=workers,
        seed_demo=seed,
        data_dir=data_dir,
        database_url=database_url,
    )
    if listen_fd is not None:
        _logging(settings)
        metrics = socket.socket(fileno=metrics_fd) if metrics_fd is not None else None
        _serve_worker(
            settings, socket.socket(fileno=listen_fd), metrics, supervisor_pid or os.getppid()
        )
        return
    sock = listen(settings.host, settings.port)
    metrics_sock = (
        listen(*parse_listen(settings.metrics_listen, "metrics_listen"), _METRICS_HINTS)
        if settings.metrics and settings.metrics_listen
        else None
    )
    _logging(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    ctx = build_context(settings, housekeeping=True)
    with reported(settings), ctx.catalog.starting():
        key = bootstrap_admin(ctx.catalog)
        ft_id = seed_demo(ctx.catalog, ctx.store) if settings.seed_demo else None
    host_part = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = sock.getsockname()[1]
    facts = ServeFacts(
        base_url=settings.public_url or f"http://{host_part}:{port}",
        data_dir=settings.data_dir,
        new_key=key,
        demo_fine_tune=ft_id,
        command=weightport_command(),
    )

    def announce(*_aiohttp_message: object) -> None:
        # aiohttp calls this once its site is serving: the moment the commands work.
        click.echo(banner(facts), err=True)

    if settings.workers == 1:
        _run(create_app(ctx), settings, sock, metrics_sock, announce)
        return
    ctx.close()  # the workers open their own; this process only supervises
    # A worker passes the port as soon as it is up: the banner's commands work from now on.
    announce()
    click.echo(f"{settings.workers} worker processes share the port", err=True)
    status = Supervisor(settings, sock, metrics_sock).run()
    if status:
        raise SystemExit(status)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    configure_access_log(settings)


def _run(
    app: web.Application,
    settings: Settings,
    sock: socket.socket,
    metrics_sock: socket.socket | None,
    announce: Callable[..., None] | None = None,
) -> None:
    if metrics_sock is not None:
        metrics_endpoint.serve_on(app, metrics_sock)
    # The standard asyncio loop keeps sendfile; measured, aiohttp on uvloop loses it and
    # serves files at ~1 GB/s instead of ~2.9 GB/s.
    web.run_app(
        app,
        sock=sock,
        print=announce,
        access_log=None,  # weightport writes its own (weightport.server.observe)
        shutdown_timeout=settings.shutdown_grace,
        # aiohttp's keep-alive timeout is also its header timeout: a connection that has
        # not sent a whole request head this long after connecting (or after its previous
        # response) is closed, however it trickles bytes.
        keepalive_timeout=settings.header_timeout,
        loop=asyncio.new_event_loop(),
    )


def _serve_worker(
    settings: Settings,
    sock: socket.socket,
    metrics_sock: socket.socket | None,
    supervisor: int,
) -> None:
    """A worker of ``serve --workers``: serve on the inherited socket until told to stop, or
    until the supervisor is gone (so a killed supervisor leaves no orphans behind)."""
    ctx = build_context(settings)

    async def watch_parent(app: web.Application) -> None:
        async def watch() -> None:
            # Polling is the only way to notice: a parent's death sends no event.
            while os.getppid() == supervisor:  # noqa: ASYNC110
                await asyncio.sleep(1)
            os.kill(os.getpid(), signal.SIGTERM)

        task = asyncio.create_task(watch())
        app.on_cleanup.append(lambda _app: _cancel(task))

    app = create_app(ctx)
    app.on_startup.append(watch_parent)
    _run(app, settings, sock, metrics_sock)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
