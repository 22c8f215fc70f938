"""``weightport serve``: run the server on this machine."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from weightport import demo
from weightport.catalog import accounts, finetunes, registry
from weightport.catalog.schema import Account
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.cli.banner import ServeFacts, banner, weightport_command
from weightport.cli.catalog import settings_from
from weightport.cli.options import data_options
from weightport.client.sources import DEFAULT_ACCOUNT
from weightport.config import parse_listen
from weightport.ingest import register_model
from weightport.server import metrics_endpoint
from weightport.server.app import build_context, create_app
from weightport.server.context import ServerContext
from weightport.server.observe import configure_access_log


def bootstrap_admin(ctx: ServerContext) -> str | None:
    """On the very first start: the admin account and a key (returned once), else None."""

    def run(session: Session) -> str | None:
        if session.scalar(select(Account.id).limit(1)) is not None:
            return None
        accounts.create_account(session, DEFAULT_ACCOUNT)
        return accounts.create_key(session, DEFAULT_ACCOUNT, "created by the first start").secret

    return ctx.catalog.call(run)


def _demo_fine_tune(session: Session) -> str | None:
    jobs = finetunes.list_fine_tunes(session, DEFAULT_ACCOUNT)
    return next((j.id for j in jobs if j.suffix == demo.DEMO_SUFFIX), None)


def seed_demo(ctx: ServerContext) -> str:
    """Seed the demo model and LoRA fine-tune into the admin account unless they exist.

    Returns the demo fine-tune's id.
    """

    def exists(session: Session) -> bool:
        try:
            registry.get_model(session, DEFAULT_ACCOUNT, demo.DEMO_MODEL_ID)
        except LookupError:
            return False
        return True

    if not ctx.catalog.call(exists):
        _seed_demo_model(ctx)
    ft_id = ctx.catalog.call(_demo_fine_tune)
    if ft_id is not None:
        return ft_id
    checkpoints = [
        CheckpointSpec(
            step,
            finetunes.FINAL if step == demo.DEMO_STEPS[-1] else finetunes.INTERMEDIATE,
            finetunes.ADAPTER,
            store_files(ctx.store, demo.demo_adapter_files(step)),
        )
        for step in demo.DEMO_STEPS
    ]
    return register_fine_tune(
        ctx.catalog,
        ctx.store,
        DEFAULT_ACCOUNT,
        base_model_id=demo.DEMO_MODEL_ID,
        training_type=finetunes.LORA,
        checkpoints=checkpoints,
        suffix=demo.DEMO_SUFFIX,
    )


def _seed_demo_model(ctx: ServerContext) -> None:
    register_model(
        ctx.catalog,
        ctx.store,
        DEFAULT_ACCOUNT,
        demo.DEMO_MODEL_ID,
        demo.demo_base_files(),
        {
            "displayName": "Demo Llama (tiny)",
            "description": "A tiny random-weight Llama seeded by weightport for trying it out",
            "kind": "HF_BASE_MODEL",
            "baseModelDetails": {
                "checkpointFormat": "HUGGINGFACE",
                "worldSize": 1,
                "modelType": "llama",
            },
        },
    )


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
    seed: bool | None,
    data_dir: Path | None,
    database_url: str | None,
) -> None:
    """Run the weightport server (binds 127.0.0.1 unless told otherwise)."""
    settings = settings_from(
        host=host,
        port=port,
        public_url=public_url,
        seed_demo=seed,
        data_dir=data_dir,
        database_url=database_url,
    )
    sock = listen(settings.host, settings.port)
    metrics_sock = (
        listen(*parse_listen(settings.metrics_listen, "metrics_listen"), _METRICS_HINTS)
        if settings.metrics and settings.metrics_listen
        else None
    )
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    configure_access_log(settings)
    ctx = build_context(settings)
    key = bootstrap_admin(ctx)
    ft_id = seed_demo(ctx) if settings.seed_demo else None
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

    # The standard asyncio loop keeps sendfile; measured, aiohttp on uvloop loses it and
    # serves files at ~1 GB/s instead of ~2.9 GB/s.
    app = create_app(ctx)
    if metrics_sock is not None:
        metrics_endpoint.serve_on(app, metrics_sock)
    web.run_app(
        app,
        sock=sock,
        print=announce,
        access_log=None,  # weightport writes its own (weightport.server.observe)
        shutdown_timeout=settings.shutdown_grace,
        loop=asyncio.new_event_loop(),
    )
