"""Web console page times (issue #12): the model list with 10⁴ models and a fine-tune page
with 100 checkpoints, as server time per page (the ``Server-Timing`` header each console
page carries: from the request reaching the console to the rendered page, database included).

    .venv/bin/python -m bench.console_pages [--quick] [--reps N]

The catalog is seeded directly (10⁴ models would take ~3·10⁴ API calls through the upload
flow; the pages only read the catalog). The fine-tune is real: a LoRA job registered through
the same code as ``weightport finetunes import``, on a base with a Llama-7B-like layout of
tensors (32 layers × 7 projections, 291 tensors; tiny dimensions), so every merged plan parses
realistic safetensors headers, and 100 distinct adapters of 448 tensors each.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import urllib3
from safetensors.numpy import save
from sqlalchemy import insert, select

from bench.common import (
    Row,
    cpu_seconds,
    machine_info,
    markdown_table,
    median,
    scratch_dir,
    write_results,
)
from bench.servers import WeightportServer
from weightport import demo
from weightport.catalog import finetunes, registry
from weightport.catalog.db import Catalog
from weightport.catalog.schema import Model, ModelFile
from weightport.checkpoint_import import CheckpointSpec, register_fine_tune, store_files
from weightport.config import load_settings
from weightport.ingest import register_model
from weightport.storage.factory import open_store

NAME = "console_pages"
TARGET_MS = 30.0
MODELS = 10_000
CHECKPOINTS = 100
LAYERS = 32
HIDDEN, INTER, HEADS, KV, HEAD_DIM, VOCAB = 64, 128, 4, 2, 16, 260
KINDS = ("HF_BASE_MODEL", "HF_PEFT_ADDON", "CUSTOM_MODEL")
_HTTP = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=300))
_CSRF = re.compile(r'name="csrf_token" value="([0-9a-f]{64})"')


def _projections() -> dict[str, tuple[int, int]]:
    return {
        "self_attn.q_proj": (HEADS * HEAD_DIM, HIDDEN),
        "self_attn.k_proj": (KV * HEAD_DIM, HIDDEN),
        "self_attn.v_proj": (KV * HEAD_DIM, HIDDEN),
        "self_attn.o_proj": (HIDDEN, HEADS * HEAD_DIM),
        "mlp.gate_proj": (INTER, HIDDEN),
        "mlp.up_proj": (INTER, HIDDEN),
        "mlp.down_proj": (HIDDEN, INTER),
    }


def base_files() -> dict[str, bytes]:
    """A 32-layer Llama-shaped base model: 291 bf16 tensors, a few MB."""
    rng = np.random.default_rng(7)
    tensors = {
        "model.embed_tokens.weight": demo.to_bf16(rng.normal(0, 0.02, (VOCAB, HIDDEN))),
        "model.norm.weight": demo.to_bf16(np.ones(HIDDEN)),
        "lm_head.weight": demo.to_bf16(rng.normal(0, 0.02, (VOCAB, HIDDEN))),
    }
    for layer in range(LAYERS):
        prefix = f"model.layers.{layer}"
        tensors[f"{prefix}.input_layernorm.weight"] = demo.to_bf16(np.ones(HIDDEN))
        tensors[f"{prefix}.post_attention_layernorm.weight"] = demo.to_bf16(np.ones(HIDDEN))
        for module, shape in _projections().items():
            tensors[f"{prefix}.{module}.weight"] = demo.to_bf16(rng.normal(0, 0.05, shape))
    config = {**demo.CONFIG, "num_hidden_layers": LAYERS}
    files = dict(demo.demo_base_files())
    files["config.json"] = json.dumps(config, indent=2).encode()
    files["model.safetensors"] = demo.bf16_safetensors(tensors)
    return files


def adapter_files(step: int, r: int = 8) -> dict[str, bytes]:
    """A LoRA adapter on all seven projections of every layer (448 tensors)."""
    rng = np.random.default_rng(step)
    tensors = {}
    for layer in range(LAYERS):
        for module, (out_dim, in_dim) in _projections().items():
            prefix = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 0.1, (r, in_dim)).astype(np.float32)
            tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.01, (out_dim, r)).astype(
                np.float32
            )
    config = json.loads(demo.demo_adapter_files(1)["adapter_config.json"])
    config["r"] = r
    return {
        "adapter_config.json": json.dumps(config).encode(),
        "adapter_model.safetensors": save(tensors, metadata={"format": "pt"}),
    }


def seed(data_dir: Path, models: int, checkpoints: int) -> str:
    """Fill the admin account (the server runs); returns the fine-tune's id."""
    settings = load_settings({"data_dir": data_dir})
    catalog = Catalog.open(settings.effective_database_url)
    store = open_store(settings)
    try:
        register_model(catalog, store, "admin", "llama-32l", base_files(), {"kind": KINDS[0]})
        rows = [
            {
                "account_id": "admin",
                "model_id": f"model-{i:05d}",
                "display_name": f"Model {i}",
                "description": "",
                "kind": KINDS[i % len(KINDS)],
                "state": registry.READY if i % 4 else registry.UPLOADING,
                "extra": {},
            }
            for i in range(models)
        ]

        def bulk(session: Any) -> None:
            session.execute(insert(Model), rows)
            pks = session.scalars(select(Model.pk).where(Model.model_id.like("model-%"))).all()
            files = [
                {
                    "model_pk": pk,
                    "path": path,
                    "declared_size": size,
                    "sha256": f"{pk:064x}",
                    "generation": 1,
                }
                for pk in pks
                for path, size in (("config.json", 700), ("model.safetensors", 4 << 30))
            ]
            session.execute(insert(ModelFile), files)

        catalog.call(bulk)
        specs = [
            CheckpointSpec(
                step,
                finetunes.FINAL if step == checkpoints * 10 else finetunes.INTERMEDIATE,
                finetunes.ADAPTER,
                store_files(store, adapter_files(step)),
            )
            for step in range(10, checkpoints * 10 + 1, 10)
        ]
        return register_fine_tune(
            catalog,
            store,
            "admin",
            base_model_id="llama-32l",
            training_type=finetunes.LORA,
            checkpoints=specs,
            suffix="bench",
        )
    finally:
        catalog.close()


def sign_in(server: WeightportServer) -> str:
    """The session cookie of a console sign-in as admin."""
    form = _HTTP.request("GET", server.base_url + "/console/sign-in")
    presession = form.headers["Set-Cookie"].split(";", 1)[0]
    token = _CSRF.search(form.data.decode())
    assert token is not None
    answer = _HTTP.request(
        "POST",
        server.base_url + "/console/sign-in",
        fields={"api_key": server.admin_key, "csrf_token": token.group(1)},
        encode_multipart=False,
        headers={"Cookie": presession},
        redirect=False,
    )
    if answer.status != 303:
        raise RuntimeError(f"sign-in failed: HTTP {answer.status}")
    return str(answer.headers["Set-Cookie"].split(";", 1)[0])


def timed(server: WeightportServer, cookie: str, path: str) -> tuple[float, float, int]:
    """(server ms from Server-Timing, client ms, body bytes) of one GET."""
    started = time.perf_counter()
    response = _HTTP.request("GET", server.base_url + path, headers={"Cookie": cookie})
    client_ms = (time.perf_counter() - started) * 1000
    if response.status != 200:
        raise RuntimeError(f"GET {path}: HTTP {response.status}")
    timing = response.headers["Server-Timing"]
    server_ms = float(timing.split("dur=", 1)[1])
    return server_ms, client_ms, len(response.data)


def run(*, quick: bool = False, reps: int | None = None) -> dict[str, Any]:
    reps = reps or (10 if quick else 40)
    models, checkpoints = (1_000, 20) if quick else (MODELS, CHECKPOINTS)
    started = time.monotonic()
    info = machine_info()
    with scratch_dir(NAME) as scratch:
        server = WeightportServer(scratch / "data").start()
        try:
            seed_started = time.monotonic()
            ft_id = seed(server.data_dir, models, checkpoints)
            seeded_s = time.monotonic() - seed_started
            cookie = sign_in(server)
            pages = {
                f"model list, page 1 of {models // 50} (by name)": "/console/models",
                "model list, page 150 (newest first)": "/console/models?sort=newest&page=150",
                "model list, search + state filter": "/console/models?q=model-12&state=READY",
                "model page (6 files)": "/console/models/llama-32l",
                f"fine-tune page, {checkpoints} checkpoints": f"/console/fine-tunes/{ft_id}",
            }
            # The first fine-tune page after start plans every archive (merged plans parse
            # the base's and each adapter's safetensors headers); later views reuse them.
            cold = timed(server, cookie, pages[f"fine-tune page, {checkpoints} checkpoints"])
            samples: dict[str, list[tuple[float, float, int]]] = {}
            cpu_ms: dict[str, float] = {}
            for name, path in pages.items():
                timed(server, cookie, path)  # warm-up
                before = cpu_seconds(server.pid)
                samples[name] = [timed(server, cookie, path) for _ in range(reps)]
                cpu_ms[name] = (cpu_seconds(server.pid) - before) * 1000 / reps
        finally:
            server.stop()
    rows = [
        Row(
            NAME,
            f"fine-tune page, {checkpoints} checkpoints, first view after start",
            cold[0],
            "ms",
        )
    ]
    for name, values in samples.items():
        server_ms = median([v[0] for v in values])
        rows.append(
            Row(
                NAME,
                f"{name}: server time",
                server_ms,
                "ms",
                f"< {TARGET_MS:g} ms",
                server_ms < TARGET_MS,
            )
        )
        rows.append(Row(NAME, f"{name}: server CPU", cpu_ms[name], "ms"))
        rows.append(Row(NAME, f"{name}: client time", median([v[1] for v in values]), "ms"))
    return {
        "name": NAME,
        "machine": info,
        "seconds": time.monotonic() - started,
        "seed_seconds": seeded_s,
        "models": models,
        "checkpoints": checkpoints,
        "reps": reps,
        "page_bytes": {name: values[0][2] for name, values in samples.items()},
        "samples_ms": {
            name: [[round(s, 3), round(c, 3)] for s, c, _ in values]
            for name, values in samples.items()
        },
        "cold_ms": cold[:2],
        "server_cpu_ms": cpu_ms,
        "loadavg_at_end": list(os.getloadavg()),
        "rows": [row.__dict__ for row in rows],
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.console_pages", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10³ models, 20 checkpoints")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args(argv)
    payload = run(quick=args.quick, reps=args.reps)
    path = write_results(NAME, payload)
    rows = [Row(**row) for row in payload["rows"]]
    print(markdown_table(rows))
    print(f"\npage sizes: {payload['page_bytes']}\nJSON: {path}")
    return 1 if any(row.ok is False for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
