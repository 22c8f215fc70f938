"""Where downloads come from: a Fireworks model's signed URLs, a Together fine-tune archive.

Both speak the public APIs' own request and response shapes, so they work against
weightport and against the original services. Where they connect, and with which key, is
:func:`resolve_api`'s decision: the local weightport server unless told otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, urlencode

from weightport.client.errors import ConfigurationError, ServerError
from weightport.client.http import HttpSession, origin
from weightport.client.remote import RemoteFile, normalize_sha256, probe

Service = Literal["fireworks", "together"]

#: Where client commands connect unless told otherwise: ``weightport serve``'s default address.
LOCAL_BASE_URL = "http://127.0.0.1:8700"
#: The account ``weightport serve`` creates on its first start.
DEFAULT_ACCOUNT = "admin"
_VENDOR_PREFIX = {"fireworks": "FIREWORKS_", "together": "TOGETHER_"}
# RFC 3986 segment characters the official Fireworks client leaves unescaped in paths.
_SEGMENT_SAFE = ":@!$&'()*+,;="
_CHECKPOINTS = ("merged", "adapter", "model_output_path", "default")


@dataclass(frozen=True)
class ApiConfig:
    """Base URL (no trailing slash), API key and account of one server."""

    base_url: str
    api_key: str
    #: The account of Fireworks-style paths; "" when none was named (a vendor's API).
    account: str = ""

    @property
    def auth(self) -> tuple[tuple[str, str], ...]:
        return (("Authorization", f"Bearer {self.api_key}"),)


def resolve_api(
    service: Service,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    account: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ApiConfig:
    """Where to connect, with which key and account; arguments always win.

    Keys from the environment only travel with the base URL of the same family, so a
    weightport key is never sent to a vendor, nor a vendor's key to weightport:

    - weightport, the default: ``WEIGHTPORT_BASE_URL``, else :data:`LOCAL_BASE_URL`; key
      ``WEIGHTPORT_API_KEY``; account ``WEIGHTPORT_ACCOUNT``, else :data:`DEFAULT_ACCOUNT`.
    - the vendor's API, only when its own ``FIREWORKS_BASE_URL`` / ``TOGETHER_BASE_URL`` is
      set and neither ``base_url`` nor ``WEIGHTPORT_BASE_URL`` is: key ``FIREWORKS_API_KEY``
      / ``TOGETHER_API_KEY``; account ``FIREWORKS_ACCOUNT_ID``.
    """
    env = os.environ if environ is None else environ
    vendor = _VENDOR_PREFIX[service]
    if base_url or env.get("WEIGHTPORT_BASE_URL") or not env.get(f"{vendor}BASE_URL"):
        prefix = "WEIGHTPORT_"
        base = base_url or env.get("WEIGHTPORT_BASE_URL") or LOCAL_BASE_URL
        acct = account or env.get("WEIGHTPORT_ACCOUNT") or DEFAULT_ACCOUNT
    else:
        prefix = vendor
        base = env[f"{vendor}BASE_URL"]
        acct = account or env.get("FIREWORKS_ACCOUNT_ID", "")
    if not re.match(r"^https?://[^/]+", base):
        raise ConfigurationError(f"base URL must start with http:// or https://, not {base!r}")
    base = base.rstrip("/")
    key = api_key or env.get(f"{prefix}API_KEY")
    if not key:
        raise ConfigurationError(f"no API key for {base}: pass --api-key or set {prefix}API_KEY")
    return ApiConfig(base, key, acct)


def parse_model_name(name: str, account: str | None) -> tuple[str, str]:
    """``ACCOUNT/MODEL``, ``accounts/A/models/M`` or ``MODEL`` with ``account`` → (A, M)."""
    parts = name.strip("/").split("/")
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "models":
        found = (parts[1], parts[3])
    elif len(parts) == 2:
        found = (parts[0], parts[1])
    elif len(parts) == 1 and account:
        found = (account, parts[0])
    else:
        raise ConfigurationError(
            f"cannot read model {name!r}: use ACCOUNT/MODEL, accounts/A/models/M, "
            "or MODEL with --account"
        )
    if account and found[0] != account:
        raise ConfigurationError(f"model {name!r} is not in account {account!r}")
    if not all(found) or any(p in (".", "..") for p in found):
        raise ConfigurationError(f"cannot read model {name!r}")
    return found


class FireworksModel:
    """All files of ``accounts/{account}/models/{model}`` through ``:getDownloadEndpoint``.

    Sizes and sha256 digests are used when the server lists them (weightport does; the
    public Fireworks API sends only the signed URLs).
    """

    def __init__(self, session: HttpSession, api: ApiConfig, account: str, model: str) -> None:
        self.session = session
        self.api = api
        self.account = account
        self.model = model

    @property
    def name(self) -> str:
        return f"accounts/{self.account}/models/{self.model}"

    @property
    def origin(self) -> str:
        """The server the listing comes from (``scheme://host[:port]``)."""
        return origin(self.api.base_url)

    @property
    def endpoint(self) -> str:
        account = quote(self.account, safe=_SEGMENT_SAFE)
        model = quote(self.model, safe=_SEGMENT_SAFE)
        return f"{self.api.base_url}/v1/accounts/{account}/models/{model}:getDownloadEndpoint"

    def list_files(self) -> Sequence[RemoteFile]:
        """The model's files with freshly signed URLs, sorted by path."""
        doc = self.session.get_json(self.endpoint, dict(self.api.auth))
        urls = doc.get("filenameToSignedUrls") if isinstance(doc, dict) else None
        if not isinstance(urls, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in urls.items()
        ):
            raise ServerError(f"{self.name}: the answer has no filenameToSignedUrls", status=200)
        sizes = _mapping(doc.get("filenameToSize"))
        digests = _mapping(doc.get("filenameToSha256"))
        return [
            RemoteFile(
                relpath=path,
                url=url,
                signed=True,
                size=_size(sizes.get(path)),
                sha256=normalize_sha256(digests.get(path)),
            )
            for path, url in sorted(urls.items())
        ]


@dataclass(frozen=True)
class FineTuneRef:
    """``FT_ID[:STEP]`` as the Together CLI takes it."""

    ft_id: str
    step: int | None

    @classmethod
    def parse(cls, text: str) -> FineTuneRef:
        ft_id, sep, step = text.partition(":")
        if not ft_id:
            raise ConfigurationError(f"cannot read fine-tune id {text!r}")
        if not sep:
            return cls(ft_id, None)
        if not step.isdigit():
            raise ConfigurationError(f"the step in {text!r} must be a whole number")
        return cls(ft_id, int(step))


class TogetherCheckpoint:
    """One archive (``.tar.zst``) of a fine-tune: merged model, adapter, output or a step."""

    def __init__(
        self,
        session: HttpSession,
        api: ApiConfig,
        ref: FineTuneRef,
        checkpoint: str | None = None,
    ) -> None:
        if checkpoint is not None and checkpoint not in _CHECKPOINTS:
            raise ConfigurationError(f"checkpoint must be one of {', '.join(_CHECKPOINTS)}")
        self.session = session
        self.api = api
        self.ref = ref
        self.checkpoint = checkpoint
        self.filename = ""

    def job(self) -> dict[str, Any]:
        """``GET /v1/fine-tunes/{id}``: the job as the server describes it."""
        doc = self.session.get_json(
            f"{self.api.base_url}/v1/fine-tunes/{quote(self.ref.ft_id, safe='')}",
            dict(self.api.auth),
        )
        if not isinstance(doc, dict):
            raise ServerError(f"{self.ref.ft_id}: the job is not a JSON object", status=200)
        return doc

    def resolve(self) -> TogetherCheckpoint:
        """Pick the default checkpoint from the job's training type and learn the file name.

        LoRA jobs default to ``merged``, full fine-tunes to ``model_output_path`` (as the
        Together CLI does). The name comes from the server's ``Content-Disposition``, else
        from ``model_output_name``.
        """
        job = self.job()
        if self.checkpoint is None:
            training = job.get("training_type")
            kind = training.get("type") if isinstance(training, dict) else None
            if not isinstance(kind, str):
                self.checkpoint = "default"
            else:
                self.checkpoint = "merged" if kind.lower() == "lora" else "model_output_path"
        remote = RemoteFile("archive", self.url, headers=self.api.auth)
        served = probe(self.session, remote).filename
        self.filename = _safe_filename(served) or self._fallback_name(job)
        return self

    @property
    def url(self) -> str:
        query: dict[str, str] = {"ft_id": self.ref.ft_id, "checkpoint": self.checkpoint or ""}
        if self.ref.step is not None:
            query["checkpoint_step"] = str(self.ref.step)
        return f"{self.api.base_url}/v1/finetune/download?{urlencode(query)}"

    def _fallback_name(self, job: Mapping[str, Any]) -> str:
        stem = job.get("model_output_name")
        if not isinstance(stem, str) or not stem:
            stem = self.ref.ft_id
        # The legacy Together client's normalisation: lower case, "/" -> "--", "_" -> "-".
        stem = stem.lower().replace("/", "--").replace("_", "-")
        if self.ref.step is not None:
            stem += f"-step-{self.ref.step}"
        return _safe_filename(f"{stem}.tar.zst") or "checkpoint.tar.zst"

    def list_files(self) -> Sequence[RemoteFile]:
        """The one archive, fetched with the API key (the URL is not pre-signed)."""
        if not self.filename:
            self.resolve()
        return [RemoteFile(self.filename, self.url, headers=self.api.auth)]


def _safe_filename(name: str | None) -> str | None:
    """A plain file name (no directories, no hidden or odd names), or ``None``."""
    if not name:
        return None
    name = name.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if not name or name in (".", "..") or name.startswith(".") or "\x00" in name:
        return None
    return name


def _mapping(value: object) -> dict[str, object]:
    return {k: v for k, v in value.items() if isinstance(k, str)} if isinstance(value, dict) else {}


def _size(value: object) -> int | None:
    # int64 travels as a decimal string in proto3 JSON; accept both spellings.
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return None
