"""The real Hugging Face clients against a real server on each stack: huggingface_hub 2.4 with
transformers 5.24, and huggingface_hub 0.36 with transformers 4.57 (overlays from ``make test``).

Each scenario runs the clients in their own process (tests/hub_client_checks.py) with
``HF_ENDPOINT``/``HF_TOKEN`` pointing here, and this side checks what they got: bytes against
what was uploaded, merged weights against peft's own merge, exceptions against the Hub's.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import load_file

from tests.conftest import BANNER_START, LiveServer, free_port
from tests.hub_repos import NESTED, SHARDS, SPACED, HubWorld, peft_merged, publish_world
from tests.tcp_proxy import TcpProxy
from weightport import demo

pytestmark = pytest.mark.oracle

OVERLAYS = ("current", "legacy")
DRIVER = Path(__file__).with_name("hub_client_checks.py")
COMMIT = re.compile(r"[0-9a-f]{40}")


def overlay_path(name: str) -> Path:
    path = Path(sys.prefix) / "hf-clients" / name
    if not path.is_dir():
        pytest.fail(f"{path} is missing: `make test` installs the Hugging Face client overlays")
    return path


@dataclass
class Clients:
    """One client overlay with its own HF_HOME, pointed at the world's server."""

    world: HubWorld
    overlay: str
    home: Path

    def env(self, endpoint: str | None = None, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update(
            PYTHONPATH=str(overlay_path(self.overlay)),
            HF_ENDPOINT=endpoint or self.world.endpoint,
            HF_TOKEN=self.world.key,
            HF_HOME=str(self.home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            TOKENIZERS_PARALLELISM="false",
        )
        env.update(extra)
        return env

    def config(self, work: Path) -> dict[str, Any]:
        world = self.world
        return {
            "repo": world.repo,
            "ft_repo": world.ft_repo,
            "ft_id_repo": world.ft_id_repo,
            "other_repo": world.other_repo,
            "missing_repo": f"{world.account}/no-such-model",
            "revoked_key": world.revoked_key,
            "nested_file": NESTED,
            "big_file": SHARDS[0],
            "work": str(work),
        }

    def run(self, scenario: str, work: Path, **env: str) -> dict[str, Any]:
        work.mkdir(parents=True, exist_ok=True)
        config, out = work / f"{scenario}-config.json", work / f"{scenario}-out.json"
        config.write_text(json.dumps(self.config(work)))
        result = subprocess.run(
            [sys.executable, str(DRIVER), scenario, str(config), str(out)],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        found: dict[str, Any] = json.loads(out.read_text())
        expected = "0.36.2" if self.overlay == "legacy" else "2.4.0"
        assert found["versions"]["huggingface_hub"] == expected
        return found

    def snapshot(self, repo: str, revision: str = "main") -> Path:
        folder = self.home / "hub" / f"models--{repo.replace('/', '--')}"
        commit = (folder / "refs" / revision).read_text()
        return folder / "snapshots" / commit


@pytest.fixture(scope="module")
def world(stack_server: LiveServer) -> HubWorld:
    """The repositories, on each stack: with S3, stored files are 302s to the store."""
    return publish_world(stack_server)


@pytest.fixture(scope="module")
def oracle(world: HubWorld, tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict]:
    """peft's merge of each adapter into the base: what every merged tensor must equal."""
    work = tmp_path_factory.mktemp("oracle")
    return {
        step: peft_merged(world.base_files, adapter, work)
        for step, adapter in world.adapters.items()
    }


@pytest.fixture(scope="module", params=OVERLAYS)
def downloaded(
    request: pytest.FixtureRequest, world: HubWorld, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Clients, dict[str, Any]]:
    """One overlay's clients after the download scenario (its cache is reused offline)."""
    work = tmp_path_factory.mktemp(f"hub-{request.param}")
    clients = Clients(world, request.param, work / "home")
    return clients, clients.run("download", work / "download")


def digests(files: dict[str, bytes]) -> dict[str, str]:
    return {path: hashlib.sha256(body).hexdigest() for path, body in files.items()}


def assert_tensors_equal(folder: Path, expected: dict[str, torch.Tensor]) -> None:
    found: dict[str, torch.Tensor] = {}
    for shard in sorted(folder.glob("*.safetensors")):
        found.update(load_file(shard))
    assert set(found) == set(expected)
    for name, tensor in expected.items():
        assert torch.equal(found[name], tensor), name


def test_snapshots_and_files_are_the_uploaded_bytes(
    downloaded: tuple[Clients, dict[str, Any]], world: HubWorld
) -> None:
    clients, got = downloaded
    expected = digests(world.base_files)
    assert got["snapshot"] == expected
    assert got["snapshot_local_dir"] == expected
    assert got["hf_hub_download"]["sha256"] == expected["config.json"]
    assert got["nested_sha256"] == expected[NESTED]
    assert got["list_repo_files"] == sorted(world.base_files)
    assert got["info"]["siblings"] == sorted(world.base_files)
    assert got["info"]["blob_sizes"] == {p: len(b) for p, b in world.base_files.items()}
    assert got["file_exists"] == [True, False]
    assert COMMIT.fullmatch(got["info"]["main"])
    # The cache is keyed by the commit the server gave: refs/main names it.
    assert clients.snapshot(world.repo).name == got["info"]["main"]


def test_listings_and_metadata(downloaded: tuple[Clients, dict[str, Any]], world: HubWorld) -> None:
    _, got = downloaded
    index = json.loads(world.base_files["model.safetensors.index.json"])
    assert got["safetensors"]["sharded"] is True
    assert got["safetensors"]["weight_map"] == index["weight_map"]
    assert got["safetensors_merged"]["weight_map"] == index["weight_map"]
    top = {path.split("/")[0] for path in world.base_files}
    assert got["fs_ls"] == sorted(f"{world.repo}/{name}" for name in top)
    params = len(world.base_files[NESTED])
    assert got["fs_ls_folder"] == [[f"{world.repo}/{NESTED}", "file", params]]
    assert got["paths_info"] == [["config.json", "RepoFile"], ["original", "RepoFolder"]]
    commits = {commit for _, commit in got["tree_expanded"]}
    assert commits == {got["info"]["main"]}
    assert SPACED in {path for path, _ in got["tree_expanded"]}


def test_fine_tune_revisions(
    downloaded: tuple[Clients, dict[str, Any]], world: HubWorld, oracle: dict[int, dict]
) -> None:
    clients, got = downloaded
    refs = got["refs"]
    steps = {"step-10", "step-30", "adapter-step-10", "adapter-step-30"}
    assert set(refs) == {"main", "adapter", *steps}
    assert refs["main"] == refs["step-30"] and refs["adapter"] == refs["adapter-step-30"]
    assert len(set(refs.values())) == 4 and all(COMMIT.fullmatch(c) for c in refs.values())
    assert got["info"]["ft_main"] == refs["main"] == got["info"]["ft_id_main"]
    assert got["info"]["ft_step"] == refs["step-10"]
    assert got["snapshot_by_id"] == got["snapshot_merged"]

    # Merged revisions: the base's other files as they are, every tensor equal to peft's merge.
    base = digests(world.base_files)
    for name in ("snapshot_merged", "snapshot_step"):
        plain = {p: d for p, d in got[name].items() if p not in SHARDS}
        assert plain == {p: d for p, d in base.items() if p not in SHARDS}
        assert set(got[name]) == set(base)
    assert_tensors_equal(clients.snapshot(world.ft_repo), oracle[30])
    assert_tensors_equal(clients.snapshot(world.ft_repo, "step-10"), oracle[10])

    # The adapter revision: its weights as uploaded, its config naming the base repository.
    adapter = clients.snapshot(world.ft_repo, "adapter")
    assert got["list_adapter_files"] == ["adapter_config.json", "adapter_model.safetensors"]
    weights = "adapter_model.safetensors"
    assert got["snapshot_adapter"][weights] == digests(world.adapters[30])[weights]
    config = json.loads((adapter / "adapter_config.json").read_text())
    original = json.loads(world.adapters[30]["adapter_config.json"])
    assert config == {**original, "base_model_name_or_path": world.repo}


def test_errors_are_the_hubs(downloaded: tuple[Clients, dict[str, Any]], tmp_path: Path) -> None:
    clients, _ = downloaded
    got = clients.run("errors", tmp_path)
    not_found = ("missing_repo", "missing_repo_download", "other_account", "other_account_download")
    for case in not_found:
        assert "RepositoryNotFoundError" in got[case]["classes"], got[case]
        assert got[case]["status"] == 404
    # Another account's repository is indistinguishable from a missing one.
    other = got["other_account"]["message"].replace(clients.world.other_repo, "X")
    missing = got["missing_repo"]["message"].replace(f"{clients.world.account}/no-such-model", "X")
    assert other == missing
    for case in ("missing_revision", "missing_revision_download"):
        assert "RevisionNotFoundError" in got[case]["classes"], got[case]
    assert "EntryNotFoundError" in got["missing_file"]["classes"], got["missing_file"]
    assert "EntryNotFoundError" in got["missing_folder"]["classes"], got["missing_folder"]
    # The 404 carried the commit, so the client remembers the file is absent there.
    assert got["no_exist_recorded"] == ["missing.json"]
    for case in ("revoked_key", "revoked_key_download"):
        assert got[case]["status"] == 401, got[case]
        assert "RepositoryNotFoundError" not in got[case]["classes"]
        assert "Invalid credentials" in got[case]["message"]


def test_offline_rerun_uses_the_cache(downloaded: tuple[Clients, dict[str, Any]]) -> None:
    clients, online = downloaded
    nobody = f"http://127.0.0.1:{free_port()}/hf"
    got = clients.run(
        "offline", clients.home.parent / "offline", endpoint=nobody, HF_HUB_OFFLINE="1"
    )
    assert got["snapshot"] == online["snapshot"]
    assert got["snapshot_merged"] == online["snapshot_merged"]
    assert got["config"] == online["hf_hub_download"]["sha256"]
    assert "EntryNotFoundError" in got["missing_file"]["classes"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hf_download_cli(overlay: str, world: HubWorld, tmp_path: Path) -> None:
    clients = Clients(world, overlay, tmp_path / "home")
    target = tmp_path / "out"
    cli = "import sys; from huggingface_hub.cli.hf import main; sys.argv[0] = 'hf'; main()"
    result = subprocess.run(
        [sys.executable, "-c", cli, "download", world.repo, "--local-dir", str(target)],
        env=clients.env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found = {
        p.relative_to(target).as_posix(): p.read_bytes()
        for p in target.rglob("*")
        if p.is_file() and ".cache" not in p.parts
    }
    assert digests(found) == digests(world.base_files)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_interrupted_download_is_retried(overlay: str, world: HubWorld, tmp_path: Path) -> None:
    url = f"{world.endpoint}/{world.ft_repo}/resolve/main/{SHARDS[0]}"
    whole = httpx.get(url, headers={"Authorization": f"Bearer {world.key}"}, timeout=60).content
    proxy = TcpProxy(world.server.port, drop_after=len(whole) // 2)
    with proxy.running():
        clients = Clients(world, overlay, tmp_path / "home")
        got = clients.run("interrupted", tmp_path / "work", endpoint=f"{proxy.base_url}/hf")
    assert proxy.dropped == 1
    assert got["sha256"] == hashlib.sha256(whole).hexdigest(), got


def test_banner_commands_run_as_printed(live_server: LiveServer, tmp_path: Path) -> None:
    # The Hugging Face lines of the first start's banner, pasted into a shell where the
    # venv's `hf` and `python` are on PATH (what installing huggingface_hub gives a user).
    assert live_server.log_path is not None
    log = live_server.log_path.read_text()
    banner = log[log.rindex(BANNER_START) :].splitlines()
    start = next(i for i, line in enumerate(banner) if line.startswith("Hugging Face-style"))
    lines = [line.strip() for line in banner[start + 1 :] if line.startswith("    ")]
    runnable = [line for line in lines if not line.startswith("vllm ")]  # needs a GPU
    assert len(runnable) == len(lines) - 1 and runnable[0].startswith("export HF_ENDPOINT=")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(PATH=f"{Path(sys.executable).parent}:/usr/bin:/bin", HF_HOME=str(tmp_path / "h"))
    ran = subprocess.run(
        ["/bin/bash", "-c", "set -e\n" + "\n".join(runnable)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    downloaded = {p.name for p in (tmp_path / "demo-llama").iterdir() if p.is_file()}
    assert downloaded == set(demo.demo_base_files())
    assert (tmp_path / "demo-adapter" / "adapter_config.json").is_file()


def test_vllm_hub_calls(world: HubWorld, tmp_path: Path) -> None:
    # vLLM 0.33 needs huggingface_hub >= 1.31: the current overlay is what it runs with.
    got = Clients(world, "current", tmp_path / "home").run("vllm", tmp_path / "work")
    index = json.loads(world.base_files["model.safetensors.index.json"])
    assert got["files"] == sorted(world.base_files)
    assert set(got["headers"]) == set(SHARDS)
    for shard in SHARDS:
        names = sorted(n for n, s in index["weight_map"].items() if s == shard)
        assert got["headers"][shard] == names
    assert got["non_weights"] == sorted(p for p in world.base_files if p not in SHARDS)
    assert set(SHARDS) <= set(got["weights"])
    assert got["lora"] == ["adapter_config.json", "adapter_model.safetensors"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_transformers_and_peft_load(
    overlay: str, world: HubWorld, oracle: dict[int, dict], tmp_path: Path
) -> None:
    clients = Clients(world, overlay, tmp_path / "home")
    got = clients.run("transformers", tmp_path / "work")
    saved = {name: load_file(path) for name, path in got["saved"].items()}
    base: dict[str, torch.Tensor] = {}
    for shard in SHARDS:
        base.update(load_tensors(world.base_files[shard]))
    for name, tensor in base.items():
        assert torch.equal(saved["base"][name], tensor), name
    for name, tensor in oracle[30].items():
        assert torch.equal(saved["merged"][name], tensor), name
        assert torch.equal(saved["peft"][name], tensor), name
    for name, tensor in oracle[10].items():
        assert torch.equal(saved["step"][name], tensor), name
    assert got["tokens"][:5] == list(b"Hello")
