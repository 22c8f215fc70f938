"""``checkpoint_step=0``: the checkpoint at step 0 where a job has one, else the final model
(as Together's clients document), on the Together route, the console and the Hub alike."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from safetensors.numpy import save
from together import Together

from tests.archive_helpers import archive_files, digests, strip_top
from tests.conftest import LiveServer
from tests.console_helpers import signed_in_client
from tests.fw_helpers import FireworksApi


def weights(seed: int) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    tensors = {"lm_head.weight": rng.standard_normal((16, 8), dtype=np.float32)}
    return {"config.json": b'{"model_type": "llama"}', "model.safetensors": save(tensors)}


@dataclass(frozen=True)
class Jobs:
    key: str
    account: str
    with_step_0: str  # checkpoints at steps 0 (intermediate) and 10 (final)
    without_step_0: str  # one final checkpoint, at step 5
    files: dict[str, dict[str, bytes]]  # by model name


@pytest.fixture(scope="module")
def jobs(live_server: LiveServer) -> Jobs:
    account = f"steps-{secrets.token_hex(3)}"
    key = live_server.new_account(account)
    api = FireworksApi(live_server.base_url, account, key)
    files = {name: weights(seed) for seed, name in enumerate(["base", "at-0", "at-10", "at-5"])}
    for name, body in files.items():
        api.publish(name, body)
    api.close()

    def register(checkpoints: list[dict[str, object]]) -> str:
        response = httpx.post(
            f"{live_server.base_url}/weightport/v1/fine-tunes",
            headers={"Authorization": f"Bearer {key}"},
            json={"base_model": "base", "training_type": "Full", "checkpoints": checkpoints},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return str(response.json()["id"])

    with_step_0 = register(
        [
            {"step": 0, "kind": "intermediate", "model": "at-0"},
            {"step": 10, "kind": "final", "model": "at-10"},
        ]
    )
    without_step_0 = register([{"step": 5, "kind": "final", "model": "at-5"}])
    return Jobs(key, account, with_step_0, without_step_0, files)


@pytest.fixture
def sdk(live_server: LiveServer, jobs: Jobs) -> Iterator[Together]:
    with Together(api_key=jobs.key, base_url=live_server.base_url) as client:
        yield client


def _archive(data: bytes) -> tuple[str, dict[str, str]]:
    top, files = strip_top(archive_files(data))
    return top, digests(files)


def test_step_0_downloads_the_checkpoint_at_step_0(sdk: Together, jobs: Jobs) -> None:
    top, files = _archive(sdk.fine_tuning.content(ft_id=jobs.with_step_0, checkpoint_step=0).read())
    assert top.endswith("-step-0")
    assert files == digests(jobs.files["at-0"])
    final_top, final = _archive(sdk.fine_tuning.content(ft_id=jobs.with_step_0).read())
    assert not final_top.endswith("-step-0") and final == digests(jobs.files["at-10"])


@pytest.mark.parametrize("query", ["&checkpoint_step=0", "&checkpoint_step=", ""])
def test_step_0_or_none_is_the_final_model_where_step_0_does_not_exist(
    live_server: LiveServer, jobs: Jobs, query: str
) -> None:
    response = httpx.get(
        f"{live_server.base_url}/v1/finetune/download?ft_id={jobs.without_step_0}{query}",
        headers={"Authorization": f"Bearer {jobs.key}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert _archive(response.content)[1] == digests(jobs.files["at-5"])


def test_console_and_hub_serve_step_0_as_the_api_does(live_server: LiveServer, jobs: Jobs) -> None:
    headers = {"Authorization": f"Bearer {jobs.key}"}
    query = f"ft_id={jobs.with_step_0}&checkpoint=model_output_path&checkpoint_step=0"
    api = httpx.get(f"{live_server.base_url}/v1/finetune/download?{query}", headers=headers)
    assert api.status_code == 200, api.text
    link = f"/console/fine-tunes/{jobs.with_step_0}/download?checkpoint=model_output_path&step=0"
    with signed_in_client(live_server.base_url, jobs.key) as console:
        page = console.get(f"/console/fine-tunes/{jobs.with_step_0}/steps/0")
        assert page.status_code == 200
        assert f'href="{link.replace("&", "&amp;")}"' in page.text
        assert console.get(link).content == api.content
    hub = f"{live_server.base_url}/hf/{jobs.account}/{jobs.with_step_0}/resolve/step-0"
    for name, body in jobs.files["at-0"].items():
        resolved = httpx.get(f"{hub}/{name}", headers=headers, follow_redirects=True)
        assert resolved.status_code == 200 and resolved.content == body
