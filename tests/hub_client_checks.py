"""Drives the real Hugging Face clients against a weightport server; run as a script.

``python tests/hub_client_checks.py SCENARIO CONFIG.json OUT.json`` with ``PYTHONPATH`` set to
one client overlay (see the Makefile: huggingface_hub 2.4 + transformers 5.24, or
huggingface_hub 0.36 + transformers 4.57) and ``HF_ENDPOINT``/``HF_TOKEN``/``HF_HOME`` set by
the test. Each scenario writes what the clients returned (paths, hashes, listings, exception
classes) to OUT.json; the test decides what is right. Nothing here imports weightport: the
clients only ever see HTTP.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import huggingface_hub as hub

Config = dict[str, Any]


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def folder_digests(folder: str | Path) -> dict[str, str]:
    """Every file under ``folder`` (except the client's own .cache) -> sha256."""
    root = Path(folder)
    return {
        p.relative_to(root).as_posix(): sha256_of(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".cache" not in p.relative_to(root).parts
    }


def raised(call: Callable[[], object]) -> dict[str, Any]:
    """The exception a call raised: its class names (most specific first) and status."""
    try:
        call()
    except Exception as exc:
        response = getattr(exc, "response", None)
        return {
            "classes": [c.__name__ for c in type(exc).__mro__],
            "status": getattr(response, "status_code", None),
            "message": str(exc),
        }
    return {"classes": [], "status": None, "message": "no exception"}


def download(cfg: Config) -> dict[str, Any]:
    """snapshot_download (cache and local_dir), hf_hub_download, listings, metadata."""
    api = hub.HfApi()
    repo, ft, work = cfg["repo"], cfg["ft_repo"], Path(cfg["work"])
    out: dict[str, Any] = {}
    out["snapshot"] = folder_digests(hub.snapshot_download(repo))
    out["snapshot_local_dir"] = folder_digests(
        hub.snapshot_download(repo, local_dir=work / "local")
    )
    out["snapshot_merged"] = folder_digests(hub.snapshot_download(ft))
    out["snapshot_step"] = folder_digests(hub.snapshot_download(ft, revision="step-10"))
    out["snapshot_adapter"] = folder_digests(hub.snapshot_download(ft, revision="adapter"))
    out["snapshot_by_id"] = folder_digests(hub.snapshot_download(cfg["ft_id_repo"]))
    config_path = hub.hf_hub_download(repo, "config.json")
    out["hf_hub_download"] = {"sha256": sha256_of(config_path), "path": config_path}
    nested = hub.hf_hub_download(repo, cfg["nested_file"])
    out["nested_sha256"] = sha256_of(nested)
    out["list_repo_files"] = api.list_repo_files(repo)
    out["list_adapter_files"] = api.list_repo_files(ft, revision="adapter")
    out["file_exists"] = [
        api.file_exists(repo, "config.json"),
        api.file_exists(repo, "missing.json"),
    ]
    metadata = api.get_safetensors_metadata(repo)
    out["safetensors"] = {
        "sharded": metadata.sharded,
        "weight_map": metadata.weight_map,
        "parameters": metadata.parameter_count,
    }
    merged = api.get_safetensors_metadata(ft)
    out["safetensors_merged"] = {"weight_map": merged.weight_map}
    fs = hub.HfFileSystem()
    out["fs_ls"] = sorted(fs.ls(f"{repo}/", detail=False))
    out["fs_ls_folder"] = sorted(
        (e["name"], e["type"], e["size"]) for e in fs.ls(f"{repo}/original", detail=True)
    )
    refs = api.list_repo_refs(ft)
    out["refs"] = {b.name: b.target_commit for b in refs.branches}
    out["info"] = {
        "main": api.model_info(repo).sha,
        "ft_main": api.model_info(ft).sha,
        "ft_id_main": api.model_info(cfg["ft_id_repo"]).sha,
        "ft_step": api.model_info(ft, revision="step-10").sha,
        "siblings": sorted(s.rfilename for s in api.model_info(repo).siblings or []),
        "blob_sizes": {
            s.rfilename: s.size for s in api.model_info(repo, files_metadata=True).siblings or []
        },
    }
    paths = api.get_paths_info(repo, ["config.json", "original", "missing.json"])
    out["paths_info"] = sorted((p.path, type(p).__name__) for p in paths)
    out["tree_expanded"] = sorted(
        (f.path, f.last_commit.oid if f.last_commit else None)
        for f in api.list_repo_tree(repo, recursive=True, expand=True)
    )
    return out


def vllm_calls(cfg: Config) -> dict[str, Any]:
    """What vLLM 0.33 asks of the Hub before loading weights, made with huggingface_hub."""
    api = hub.HfApi()
    repo = cfg["ft_repo"]
    out: dict[str, Any] = {}
    out["sha"] = api.model_info(repo).sha  # resolve_revision
    files = api.list_repo_files(repo)  # file_or_path_exists / list_filtered_repo_files
    out["files"] = files
    out["listing"] = sorted(hub.HfFileSystem().ls(f"{repo}/", detail=False))
    out["headers"] = {}
    for name in files:  # _read_safetensors_metadata_in_repo: one Range read per shard
        if name.endswith(".safetensors"):
            parsed = api.parse_safetensors_file_metadata(repo, name)
            out["headers"][name] = sorted(parsed.tensors)
    non_weights = hub.snapshot_download(repo, ignore_patterns=["*.safetensors", "*.bin", "*.pt"])
    out["non_weights"] = sorted(folder_digests(non_weights))
    index = json.loads(Path(hub.hf_hub_download(repo, "model.safetensors.index.json")).read_text())
    shards = sorted(set(index["weight_map"].values()))
    weights = hub.snapshot_download(repo, allow_patterns=shards)
    out["weights"] = folder_digests(weights)
    lora = hub.snapshot_download(repo, revision="adapter")  # --lora-modules name=repo
    out["lora"] = sorted(folder_digests(lora))
    return out


def errors(cfg: Config) -> dict[str, Any]:
    """Every way to be told no, as the client reports it."""
    repo, ft = cfg["repo"], cfg["ft_repo"]
    api = hub.HfApi()
    revoked = hub.HfApi(token=cfg["revoked_key"])
    return {
        "missing_repo": raised(lambda: api.model_info(cfg["missing_repo"])),
        "missing_repo_download": raised(
            lambda: hub.hf_hub_download(cfg["missing_repo"], "config.json")
        ),
        "other_account": raised(lambda: api.model_info(cfg["other_repo"])),
        "other_account_download": raised(
            lambda: hub.hf_hub_download(cfg["other_repo"], "config.json")
        ),
        "missing_revision": raised(lambda: api.model_info(ft, revision="step-999")),
        "missing_revision_download": raised(
            lambda: hub.hf_hub_download(ft, "config.json", revision="step-999")
        ),
        "missing_file": raised(lambda: hub.hf_hub_download(repo, "missing.json")),
        "missing_folder": raised(lambda: api.list_repo_tree(repo, path_in_repo="nope").__next__()),
        "revoked_key": raised(lambda: revoked.model_info(repo)),
        # A fresh cache: with the file cached, a failed HEAD makes the client use its copy.
        "revoked_key_download": raised(
            lambda: hub.hf_hub_download(
                repo, "config.json", token=cfg["revoked_key"], cache_dir=Path(cfg["work"]) / "c"
            )
        ),
        "no_exist_recorded": sorted(
            p.name
            for p in Path(os.environ["HF_HOME"]).rglob("missing.json")
            if ".no_exist" in p.parts
        ),
    }


def offline(cfg: Config) -> dict[str, Any]:
    """A second run with HF_HUB_OFFLINE=1 (and an endpoint nobody listens on)."""
    repo, ft = cfg["repo"], cfg["ft_repo"]
    return {
        "snapshot": folder_digests(hub.snapshot_download(repo)),
        "snapshot_merged": folder_digests(hub.snapshot_download(ft)),
        "config": sha256_of(hub.hf_hub_download(repo, "config.json")),
        "missing_file": raised(lambda: hub.hf_hub_download(repo, "missing.json")),
    }


def interrupted(cfg: Config) -> dict[str, Any]:
    """A merged shard (streamed by weightport on every stack) whose connection is cut
    mid-body, retried as a user would."""
    attempts: list[str] = []
    for _ in range(3):
        try:
            path = hub.hf_hub_download(cfg["ft_repo"], cfg["big_file"])
        except Exception as exc:
            attempts.append(type(exc).__name__)
            continue
        return {"failed_attempts": attempts, "sha256": sha256_of(path)}
    return {"failed_attempts": attempts, "sha256": None}


def transformers_loads(cfg: Config) -> dict[str, Any]:
    """from_pretrained of a model, a merged fine-tune, a step; the tokenizer; peft's adapter."""
    import torch
    from peft import PeftModel
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out_dir = Path(cfg["work"])

    def load(repo: str, **kwargs: Any) -> Any:
        return AutoModelForCausalLM.from_pretrained(repo, dtype=torch.bfloat16, **kwargs)

    def save(name: str, model: Any) -> str:
        path = out_dir / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
        return str(path)

    saved = {
        "base": save("base", load(cfg["repo"])),
        "merged": save("merged", load(cfg["ft_repo"])),
        "step": save("step", load(cfg["ft_repo"], revision="step-10")),
    }
    adapter = PeftModel.from_pretrained(load(cfg["repo"]), cfg["ft_repo"], revision="adapter")
    saved["peft"] = save("peft", adapter.merge_and_unload())
    tokenizer = AutoTokenizer.from_pretrained(cfg["repo"])
    return {"saved": saved, "tokens": tokenizer("Hello world")["input_ids"]}


SCENARIOS: dict[str, Callable[[Config], dict[str, Any]]] = {
    "download": download,
    "vllm": vllm_calls,
    "errors": errors,
    "offline": offline,
    "interrupted": interrupted,
    "transformers": transformers_loads,
}


def main() -> None:
    scenario, config, out = sys.argv[1:4]
    result = SCENARIOS[scenario](json.loads(Path(config).read_text()))
    result["versions"] = {"huggingface_hub": hub.__version__}
    Path(out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
