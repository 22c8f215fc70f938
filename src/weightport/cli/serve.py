"""``weightport serve``: run the server on this machine."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click
from aiohttp import web
from sqlalchemy import select
from sqlalchemy.orm import Session

from weightport import demo
from weightport.catalog import accounts, finetunes, registry
from weightport.catalog.schema import Account
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.cli.options import data_options, settings_from
from weightport.ingest import register_model
from weightport.server.app import build_context, create_app
from weightport.server.context import ServerContext

ADMIN = "admin"


def bootstrap_admin(ctx: ServerContext) -> str | None:
    """On the very first start: the admin account and a key (returned once), else None."""

    def run(session: Session) -> str | None:
        if session.scalar(select(Account.id).limit(1)) is not None:
            return None
        accounts.create_account(session, ADMIN)
        return accounts.create_key(session, ADMIN, "created by the first start").secret

    return ctx.catalog.call(run)


def _demo_fine_tune(session: Session) -> str | None:
    jobs = finetunes.list_fine_tunes(session, ADMIN)
    return next((j.id for j in jobs if j.suffix == demo.DEMO_SUFFIX), None)


def seed_demo(ctx: ServerContext) -> str:
    """Seed the demo model and LoRA fine-tune into the admin account unless they exist.

    Returns the demo fine-tune's id.
    """

    def exists(session: Session) -> bool:
        try:
            registry.get_model(session, ADMIN, demo.DEMO_MODEL_ID)
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
        ADMIN,
        base_model_id=demo.DEMO_MODEL_ID,
        training_type=finetunes.LORA,
        checkpoints=checkpoints,
        suffix=demo.DEMO_SUFFIX,
    )


def _seed_demo_model(ctx: ServerContext) -> None:
    register_model(
        ctx.catalog,
        ctx.store,
        ADMIN,
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


def banner(ctx: ServerContext, key: str | None, base: str, ft_id: str | None) -> str:
    shown_key = key or "<your key>"
    lines = [f"weightport serving on {base}  (data: {ctx.settings.data_dir.resolve()})", ""]
    if key:
        lines += [
            "First start: created account 'admin' with this API key (shown only now):",
            f"    {key}",
            "",
        ]
    else:
        lines += ["Need a key? weightport keys create --account admin", ""]
    lines += [
        "Try it (Fireworks-style, per-file signed URLs):",
        f"    export FIREWORKS_BASE_URL={base} FIREWORKS_API_KEY={shown_key} "
        f"FIREWORKS_ACCOUNT_ID={ADMIN}",
        f"    curl -s -H 'Authorization: Bearer {shown_key}' "
        f"{base}/v1/accounts/{ADMIN}/models/{demo.DEMO_MODEL_ID}:getDownloadEndpoint",
        f"    weightport download model {ADMIN}/{demo.DEMO_MODEL_ID} -o ./demo-llama "
        f"--base-url {base} --api-key {shown_key}",
    ]
    if ft_id:
        lines += [
            "",
            "Together-style (one .tar.zst per checkpoint; merged LoRA computed on the fly):",
            f"    export TOGETHER_BASE_URL={base} TOGETHER_API_KEY={shown_key} "
            "TOGETHER_TELEMETRY_DISABLED=1 TOGETHER_DISABLE_VERSION_CHECK=1",
            f"    together fine-tuning download {ft_id} -o demo-merged.tar.zst",
            f"    together fine-tuning download {ft_id} -c adapter -o demo-adapter.tar.zst",
            f"    together fine-tuning download {ft_id}:{demo.DEMO_STEPS[0]} -o demo-step.tar.zst",
            f"    weightport download finetune {ft_id} -o ./demo-merged --extract "
            f"--strip-components 1 --base-url {base} --api-key {shown_key}",
        ]
    return "\n".join(lines)


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
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    logging.getLogger("alembic").setLevel(logging.WARNING)
    ctx = build_context(settings)
    key = bootstrap_admin(ctx)
    ft_id = seed_demo(ctx) if settings.seed_demo else None
    host_part = f"[{settings.host}]" if ":" in settings.host else settings.host
    base = settings.public_url or f"http://{host_part}:{settings.port}"
    click.echo(banner(ctx, key, base, ft_id), err=True)
    # The standard asyncio loop keeps sendfile; measured, aiohttp on uvloop loses it and
    # serves files at ~1 GB/s instead of ~2.9 GB/s.
    web.run_app(
        create_app(ctx),
        host=settings.host,
        port=settings.port,
        print=None,
        access_log=None,
        loop=asyncio.new_event_loop(),
    )
