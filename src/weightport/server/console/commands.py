"""Ready-to-paste commands shown on model and fine-tune pages.

Each command is a :class:`CommandTemplate`; a page shows every template of its list, so a
new client is one more line (the Hugging Face CLI once the Hub endpoint exists, e.g.
``CommandTemplate("hf", "Hugging Face CLI", "HF_ENDPOINT={base} HF_TOKEN=\\"$WEIGHTPORT_API_KEY\\"
hf download {account}/{model} --local-dir {model}")``). Values are shell-quoted before they are
put in, and the API key is never: every command reads it from ``$WEIGHTPORT_API_KEY``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """One rendered command: ``id`` is unique on its page (for the copy button)."""

    id: str
    label: str
    text: str


@dataclass(frozen=True)
class CommandTemplate:
    """A command with ``{name}`` fields; values are shell-quoted when it is rendered."""

    id: str
    label: str
    template: str

    def render(self, id_prefix: str = "", **values: str) -> Command:
        quoted = {name: shlex.quote(value) for name, value in values.items()}
        return Command(f"{id_prefix}{self.id}", self.label, self.template.format(**quoted))


_FIREWORKS_PYTHON = """\
FIREWORKS_BASE_URL={base} FIREWORKS_ACCOUNT_ID={account} \\
FIREWORKS_API_KEY="$WEIGHTPORT_API_KEY" python3 - {model} <<'EOF'
import pathlib, sys, urllib.request
from fireworks import Fireworks
model = sys.argv[1]
urls = Fireworks().models.get_download_endpoint(model).filename_to_signed_urls
for name, url in sorted(urls.items()):
    target = pathlib.Path(model, name)
    target.parent.mkdir(parents=True, exist_ok=True)
    urllib.request.urlretrieve(url, target)
    print(target)
EOF"""

# getDownloadEndpoint answers with a signed URL per file; a curl config on stdin fetches
# them all (in parallel, into MODEL/ with sub-folders), without the key leaving this shell.
_CURL_SIGNED_URLS = """\
curl -fsS -H "Authorization: Bearer $WEIGHTPORT_API_KEY" \\
  {endpoint} \\
  | python3 -c 'import json, sys
for name, url in json.load(sys.stdin)["filenameToSignedUrls"].items():
    print("url = " + json.dumps(url) + "\\noutput = " + json.dumps(name, ensure_ascii=False))' \\
  | curl -fL --parallel --create-dirs --output-dir {model} -K -"""

MODEL_COMMANDS: tuple[CommandTemplate, ...] = (
    CommandTemplate(
        "weightport",
        "weightport download (parallel, resumable, verified)",
        "weightport download model {account}/{model} -o {model} --base-url {base}",
    ),
    CommandTemplate("fireworks", "Fireworks SDK (Python)", _FIREWORKS_PYTHON),
    CommandTemplate("curl", "curl with signed URLs", _CURL_SIGNED_URLS),
)

_TOGETHER_ENV = (
    'TOGETHER_BASE_URL={base} TOGETHER_API_KEY="$WEIGHTPORT_API_KEY" '
    "TOGETHER_TELEMETRY_DISABLED=1 TOGETHER_DISABLE_VERSION_CHECK=1"
)

#: ``{checkpoint}`` is the API's ``checkpoint=`` value; the Together CLI names the full
#: output of a Full fine-tune ``default`` (it refuses ``merged``/``adapter`` there).
FINETUNE_COMMANDS: tuple[CommandTemplate, ...] = (
    CommandTemplate(
        "weightport",
        "weightport download",
        "weightport download finetune {ref} -c {checkpoint} -o {output} --base-url {base}",
    ),
    CommandTemplate(
        "together",
        "Together CLI",
        _TOGETHER_ENV + " together fine-tuning download {ref} -c {together_checkpoint} -o {output}",
    ),
)
TOGETHER_CHECKPOINT = {"merged": "merged", "adapter": "adapter", "model_output_path": "default"}


def model_commands(base: str, account: str, model: str) -> list[Command]:
    """The download commands for a READY model, with this server and account filled in."""
    endpoint = f"{base}/v1/accounts/{account}/models/{model}:getDownloadEndpoint"
    return [
        t.render(base=base, account=account, model=model, endpoint=endpoint) for t in MODEL_COMMANDS
    ]


def finetune_commands(
    base: str, ref: str, checkpoint: str, output: str, *, id_prefix: str
) -> list[Command]:
    """The download commands for one archive of a fine-tune: ``ref`` is ``ft-…`` or
    ``ft-…:STEP``, ``checkpoint`` the API's ``checkpoint=`` value (merged, adapter or
    model_output_path), ``output`` the file to write."""
    return [
        t.render(
            id_prefix,
            base=base,
            ref=ref,
            checkpoint=checkpoint,
            together_checkpoint=TOGETHER_CHECKPOINT[checkpoint],
            output=output,
        )
        for t in FINETUNE_COMMANDS
    ]
