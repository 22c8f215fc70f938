"""The unmodified together 3.1.1 SDK and CLI against a real weightport server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import together
from together import Together

from tests.archive_helpers import archive_files, digests, strip_top
from tests.conftest import LiveServer
from tests.together_cli import run_cli
from weightport import demo


@pytest.fixture
def client(stack_server: LiveServer) -> Iterator[Together]:
    with Together(api_key=stack_server.admin_key, base_url=stack_server.base_url) as sdk:
        yield sdk


def test_retrieve_list_and_checkpoints(client: Together, stack_demo_job: str) -> None:
    job = client.fine_tuning.retrieve(stack_demo_job)
    assert job.id == stack_demo_job
    assert job.status == "completed"
    assert job.x_model_output_name and job.x_model_output_name.startswith("admin/demo-llama-demo")
    assert job.training_type is not None
    assert job.training_type.type == "Lora"
    listed = client.fine_tuning.list()
    assert stack_demo_job in [j.id for j in listed.data or []]
    checkpoints = client.fine_tuning.list_checkpoints(stack_demo_job).data or []
    kinds = sorted((c.step, c.checkpoint_type) for c in checkpoints)
    assert kinds == [
        (10, "Intermediate"),
        (20, "Intermediate"),
        (30, "Final Adapter"),
        (30, "Final Merged"),
    ]


def test_sdk_content_adapter_matches_imported_files(client: Together, stack_demo_job: str) -> None:
    data = client.fine_tuning.content(ft_id=stack_demo_job, checkpoint="adapter").read()
    top, files = strip_top(archive_files(data))
    assert top.endswith("-adapter")
    assert digests(files) == digests(demo.demo_adapter_files(30))


def test_sdk_streaming_content_of_a_step(
    client: Together, stack_demo_job: str, tmp_path: Path
) -> None:
    target = tmp_path / "step10.tar.zst"
    with client.fine_tuning.with_streaming_response.content(
        ft_id=stack_demo_job, checkpoint_step=10
    ) as response:
        response.stream_to_file(target)
    top, files = strip_top(archive_files(target.read_bytes()))
    assert top.endswith("-adapter-step-10")
    assert digests(files) == digests(demo.demo_adapter_files(10))


def test_sdk_errors_are_typed(client: Together, stack_demo_job: str) -> None:
    with pytest.raises(together.NotFoundError):
        client.fine_tuning.retrieve("ft-00000000-0000-0000-0000-000000000000")
    with pytest.raises(together.BadRequestError) as bad_step:
        client.fine_tuning.content(ft_id=stack_demo_job, checkpoint_step=11).read()
    assert "10, 20, 30" in str(bad_step.value)
    with pytest.raises(together.BadRequestError):
        client.fine_tuning.content(ft_id="not-an-ft-id").read()


@pytest.mark.parametrize(
    ("suffix", "options", "expected_step", "adapter"),
    [
        ("", ["-c", "adapter"], 30, True),
        (":20", [], 20, False),
        ("", ["-s", "10", "-c", "adapter"], 10, True),
    ],
)
def test_cli_download(
    stack_server: LiveServer,
    stack_demo_job: str,
    tmp_path: Path,
    suffix: str,
    options: list[str],
    expected_step: int,
    adapter: bool,
) -> None:
    out = tmp_path / "out.tar.zst"
    result = run_cli(stack_server, tmp_path, stack_demo_job + suffix, *options, "-o", str(out))
    assert result.returncode == 0, result.stdout + result.stderr
    top, files = strip_top(archive_files(out.read_bytes()))
    if adapter:
        assert digests(files) == digests(demo.demo_adapter_files(expected_step))
    else:
        # A step without -c: the CLI asks for merged: the base model with that adapter merged.
        assert set(files) == set(demo.demo_base_files())
        assert top.endswith(f"-step-{expected_step}")
