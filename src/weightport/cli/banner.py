"""What ``weightport serve`` prints once it is listening: where, a key, and commands to try.

Every command is meant to run exactly as printed when pasted into a shell: ``weightport`` is
spelled as this installation can be reached (an absolute path when its virtualenv is not on
PATH), and a key that is not known is read from ``$WEIGHTPORT_API_KEY``, which the printed
``keys create`` line sets. A new protocol adds one section function to :data:`SECTIONS`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from weightport import demo
from weightport.client.sources import DEFAULT_ACCOUNT

INDENT = "    "


@dataclass(frozen=True)
class ServeFacts:
    """What the banner is made of."""

    base_url: str
    data_dir: Path
    #: The admin key created by this (first) start, else None: it is never shown again.
    new_key: str | None
    #: The demo fine-tune's id when ``--demo`` seeded it (and the demo model), else None.
    demo_fine_tune: str | None
    #: How to run weightport from a shell (see :func:`weightport_command`).
    command: str

    @property
    def key(self) -> str:
        """The key as commands spell it: the new one, else the variable the hint sets."""
        return self.new_key or "$WEIGHTPORT_API_KEY"

    @property
    def client_flags(self) -> str:
        return f"--base-url {shlex.quote(self.base_url)} --api-key {self.key}"


def weightport_command() -> str:
    """How to run this installation of weightport from any shell, quoted for pasting.

    ``weightport`` when that name on PATH is this installation; else the absolute path of
    the script beside this Python (a virtualenv that is not activated); else ``python -m``.
    """
    script = Path(sys.executable).absolute().parent / "weightport"
    found = shutil.which("weightport")
    if not script.is_file():
        return f"{shlex.quote(sys.executable)} -m weightport"
    if found is not None and os.path.samefile(found, script):
        return "weightport"
    return shlex.quote(str(script))


def _header(facts: ServeFacts) -> list[str]:
    return [f"weightport serving on {facts.base_url}  (data: {facts.data_dir.resolve()})"]


def _key(facts: ServeFacts) -> list[str]:
    if facts.new_key:
        return [
            f"First start: created account '{DEFAULT_ACCOUNT}' with this API key (shown only now):",
            INDENT + facts.new_key,
        ]
    create = (
        f"{facts.command} keys create --account {DEFAULT_ACCOUNT} "
        f"--data-dir {shlex.quote(str(facts.data_dir.resolve()))}"
    )
    return ["Need a key? Create one:", f"{INDENT}export WEIGHTPORT_API_KEY=$({create})"]


def _fireworks(facts: ServeFacts) -> list[str]:
    cmd, flags = facts.command, facts.client_flags
    fireworks_env = (
        f"{INDENT}export FIREWORKS_BASE_URL={shlex.quote(facts.base_url)} "
        f"FIREWORKS_API_KEY={facts.key} FIREWORKS_ACCOUNT_ID={DEFAULT_ACCOUNT}"
        "   # for the official fireworks-ai client"
    )
    if facts.demo_fine_tune is None:
        return [
            "Models (Fireworks-style, per-file signed URLs):",
            f"{INDENT}{cmd} models push DIR --model MODEL_ID {flags}",
            f"{INDENT}{cmd} models list {flags}",
            fireworks_env,
        ]
    endpoint = (
        f"{facts.base_url}/v1/accounts/{DEFAULT_ACCOUNT}/models/"
        f"{demo.DEMO_MODEL_ID}:getDownloadEndpoint"
    )
    model = f"{DEFAULT_ACCOUNT}/{demo.DEMO_MODEL_ID}"
    return [
        "Try it (Fireworks-style, per-file signed URLs):",
        f'{INDENT}curl -s -H "Authorization: Bearer {facts.key}" {shlex.quote(endpoint)}',
        f"{INDENT}{cmd} download model {model} -o ./demo-llama {flags}",
        fireworks_env,
    ]


def _together(facts: ServeFacts) -> list[str]:
    ft_id = facts.demo_fine_tune
    if not ft_id:
        return []
    return [
        "Together-style (one .tar.zst per checkpoint; merged LoRA computed on the fly):",
        f"{INDENT}{facts.command} download finetune {ft_id} -o ./demo-merged --extract "
        f"--strip-components 1 {facts.client_flags}",
        "  with the official client (pip install together):",
        f"{INDENT}export TOGETHER_BASE_URL={shlex.quote(facts.base_url)} "
        f"TOGETHER_API_KEY={facts.key} "
        "TOGETHER_TELEMETRY_DISABLED=1 TOGETHER_DISABLE_VERSION_CHECK=1",
        f"{INDENT}together fine-tuning download {ft_id} -o demo-merged.tar.zst",
        f"{INDENT}together fine-tuning download {ft_id} -c adapter -o demo-adapter.tar.zst",
        f"{INDENT}together fine-tuning download {ft_id}:{demo.DEMO_STEPS[0]} -o demo-step.tar.zst",
    ]


def _hugging_face(facts: ServeFacts) -> list[str]:
    model = f"{DEFAULT_ACCOUNT}/{demo.DEMO_MODEL_ID}"
    load = "from transformers import AutoModelForCausalLM as M; M.from_pretrained"
    lines = [
        "Hugging Face-style (transformers, hf download, vLLM, peft; HF_TOKEN is a weightport key):",
        f"{INDENT}export HF_ENDPOINT={shlex.quote(facts.base_url + '/hf')} HF_TOKEN={facts.key} "
        "HF_HUB_DISABLE_TELEMETRY=1",
    ]
    ft_id = facts.demo_fine_tune
    if not ft_id:
        return [*lines, f"{INDENT}hf download {DEFAULT_ACCOUNT}/MODEL_ID --local-dir ./MODEL_ID"]
    repo = f"{DEFAULT_ACCOUNT}/{ft_id}"
    return [
        *lines,
        f"{INDENT}hf download {model} --local-dir ./demo-llama",
        f"{INDENT}python -c '{load}(\"{model}\")'",
        f"{INDENT}python -c '{load}(\"{repo}\")'   # merged LoRA, computed on the fly",
        f"{INDENT}hf download {repo} --revision adapter --local-dir ./demo-adapter   # for peft",
        f"{INDENT}vllm serve {repo}",
    ]


#: The banner's sections, in order; each returns its lines, or none to be left out.
SECTIONS: list[Callable[[ServeFacts], list[str]]] = [
    _header,
    _key,
    _fireworks,
    _together,
    _hugging_face,
]


def banner(facts: ServeFacts) -> str:
    """The banner: the non-empty sections, a blank line between them."""
    return "\n\n".join("\n".join(lines) for lines in (s(facts) for s in SECTIONS) if lines)
