"""The merged archive, downloaded with the together CLI and extracted, loads with transformers
and gives the same logits as peft's merge_and_unload of the same base and adapter."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from tests.conftest import LiveServer
from tests.together_cli import CLI, cli_env
from weightport import demo

pytestmark = pytest.mark.oracle


def write_files(folder: Path, files: dict[str, bytes]) -> Path:
    for name, body in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(body)
    return folder


def test_merged_archive_loads_and_matches_peft_logits(
    live_server: LiveServer,
    demo_job: str,
    tmp_path: Path,
) -> None:
    out = tmp_path / "merged.tar.zst"
    result = subprocess.run(
        [CLI, "fine-tuning", "download", demo_job, "-o", str(out)],
        env=cli_env(live_server, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    extracted = tmp_path / "extracted"
    subprocess.run(["tar", "--zstd", "-xf", str(out), "-C", str(tmp_path)], check=True)
    (top,) = [p for p in tmp_path.iterdir() if p.is_dir() and p.name.startswith("demo-llama")]
    top.rename(extracted)

    base_dir = write_files(tmp_path / "base", demo.demo_base_files())
    adapter_dir = write_files(tmp_path / "adapter", demo.demo_adapter_files(demo.DEMO_STEPS[-1]))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.bfloat16)
    oracle = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    ours = AutoModelForCausalLM.from_pretrained(extracted, dtype=torch.bfloat16)

    oracle_state, our_state = oracle.state_dict(), ours.state_dict()
    assert set(oracle_state) == set(our_state)
    for name, tensor in oracle_state.items():
        assert torch.equal(tensor, our_state[name]), name

    tokens = torch.tensor([[256, 72, 101, 108, 108, 111, 32, 119, 111, 114, 108, 100]])
    with torch.no_grad():
        expected = oracle(tokens).logits
        got = ours(tokens).logits
    assert torch.equal(expected, got)
