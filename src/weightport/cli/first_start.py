"""What a server's first start does, once however many processes start together: the admin
account and its first key, and the demo data.

Callers hold the catalog's start-up lock (:meth:`~weightport.catalog.db.Catalog.starting`),
so a replica or worker starting beside another finds the admin account made and prints no key.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from weightport import demo
from weightport.catalog import accounts, finetunes, registry
from weightport.catalog.db import Catalog
from weightport.catalog.schema import Account
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.client.sources import DEFAULT_ACCOUNT
from weightport.ingest import register_model
from weightport.storage.base import BlobStore


def bootstrap_admin(catalog: Catalog) -> str | None:
    """On the very first start: the admin account and a key (returned once), else None."""

    def run(session: Session) -> str | None:
        if session.scalar(select(Account.id).limit(1)) is not None:
            return None
        accounts.create_account(session, DEFAULT_ACCOUNT)
        return accounts.create_key(session, DEFAULT_ACCOUNT, "created by the first start").secret

    return catalog.call(run)


def _demo_fine_tune(session: Session) -> str | None:
    jobs = finetunes.list_fine_tunes(session, DEFAULT_ACCOUNT)
    return next((j.id for j in jobs if j.suffix == demo.DEMO_SUFFIX), None)


def seed_demo(catalog: Catalog, store: BlobStore) -> str:
    """Seed the demo model and LoRA fine-tune into the admin account unless they exist.

    Returns the demo fine-tune's id.
    """

    def exists(session: Session) -> bool:
        try:
            registry.get_model(session, DEFAULT_ACCOUNT, demo.DEMO_MODEL_ID)
        except LookupError:
            return False
        return True

    if not catalog.call(exists):
        _seed_demo_model(catalog, store)
    ft_id = catalog.call(_demo_fine_tune)
    if ft_id is not None:
        return ft_id
    checkpoints = [
        CheckpointSpec(
            step,
            finetunes.FINAL if step == demo.DEMO_STEPS[-1] else finetunes.INTERMEDIATE,
            finetunes.ADAPTER,
            store_files(store, demo.demo_adapter_files(step)),
        )
        for step in demo.DEMO_STEPS
    ]
    return register_fine_tune(
        catalog,
        store,
        DEFAULT_ACCOUNT,
        base_model_id=demo.DEMO_MODEL_ID,
        training_type=finetunes.LORA,
        checkpoints=checkpoints,
        suffix=demo.DEMO_SUFFIX,
    )


def _seed_demo_model(catalog: Catalog, store: BlobStore) -> None:
    register_model(
        catalog,
        store,
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
