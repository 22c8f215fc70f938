"""Settings: explicit argument > environment (``WEIGHTPORT_*``) > config file > default.

The config file is TOML (``weightport.toml`` in the data directory, or ``WEIGHTPORT_CONFIG``)
with the same keys as :class:`Settings`. Values are parsed strictly: an unknown key or a
boolean spelled ``"maybe"`` is an error, never a silent default. Nothing is read at import.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightport.errors import InvalidArgument

ENV_PREFIX = "WEIGHTPORT_"
CONFIG_FILE_NAME = "weightport.toml"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True)
class Settings:
    """Everything a weightport server needs to know, with documented defaults."""

    #: Where SQLite, the local blob store (unless ``storage_url`` says otherwise) and the
    #: signing keys live.
    data_dir: Path = Path("weightport-data")
    #: Address to bind. Loopback by default: expose deliberately.
    host: str = "127.0.0.1"
    #: Port to listen on.
    port: int = 8700
    #: Server processes on this machine sharing the port (``serve --workers``); each is a
    #: full server, so N workers are N replicas on one box.
    workers: int = 1
    #: SQLAlchemy URL; empty means SQLite in the data directory.
    database_url: str = ""
    #: Where blobs live: empty means the local store in ``DATA_DIR/store``; a path or
    #: ``file:///abs/path`` a local store there; ``s3://BUCKET/PREFIX`` an S3 store.
    storage_url: str = ""
    #: S3 API endpoint weightport itself talks to (empty: AWS, from ``s3_region``).
    s3_endpoint: str = ""
    #: S3 endpoint clients reach, which presigned URLs are signed for (SigV4 signs the host).
    #: Empty: the same as ``s3_endpoint``.
    s3_public_endpoint: str = ""
    #: Region of the bucket (SigV4 signs it too).
    s3_region: str = "us-east-1"
    #: Keep file bytes flowing through weightport (its own signed, revocable URLs) instead
    #: of handing out the store's presigned URLs: for stores clients cannot reach.
    s3_proxy: bool = False
    #: Lifetime of the store's presigned URLs, seconds (at most 7 days). Short, because a
    #: presigned URL cannot be revoked by weightport.
    s3_presign_ttl: int = 900
    #: Largest object written by one PUT or copied by one CopyObject (AWS: 5 GiB). Larger
    #: uploads go through weightport as a multipart upload; larger copies use UploadPartCopy.
    s3_max_put_size: int = 5 << 30
    #: S3 folders ``:import`` (``weightport models push s3://…``) may read, comma-separated
    #: ``s3://BUCKET/PREFIX``; empty: imports over HTTP are off. (The server reads with its
    #: own credentials, which also reach the store: never list the store's own prefix.)
    s3_import_prefixes: str = ""
    #: Staging objects (direct uploads never validated, interrupted writes) older than this
    #: many seconds are removed by the sweep.
    staging_max_age: int = 86400
    #: Base URL clients reach this server at, used in signed URLs. Empty: from the request.
    public_url: str = ""
    #: Lifetime of signed download URLs, seconds.
    download_url_ttl: int = 3600
    #: Lifetime of signed upload URLs, seconds.
    upload_url_ttl: int = 3600
    #: Seconds a revoked API key's signed URLs may still be served: how long a replica
    #: trusts an "active" answer about the key that minted a URL. 0: ask the catalog always.
    revocation_delay: int = 5
    #: Most ranges served in one multi-range request before answering the whole entity.
    max_ranges: int = 64
    #: Largest JSON request body accepted, bytes.
    max_json_body: int = 4 * 1024 * 1024
    #: Largest single uploaded file, bytes.
    max_upload_size: int = 1 << 40
    #: Seconds a client may take to send a complete request head, counted from when it
    #: connects or its previous response ended; also how long an idle keep-alive connection
    #: stays open (aiohttp's keep-alive timeout, which is also its only header timeout).
    header_timeout: int = 60
    #: Seconds a client may go without sending a byte of a request body it announced
    #: (uploads, JSON) before it is answered 408 and dropped.
    body_timeout: int = 60
    #: Seconds a client may go without accepting a byte of a response that waits on it
    #: before the connection is dropped (a slow client that keeps reading is never cut).
    send_timeout: int = 60
    #: Computed downloads (Together archives: merged, adapter, stored views) one account may
    #: run at once in one server process; more are answered 429 with Retry-After. 0: no cap.
    max_computed_downloads: int = 16
    #: Archive encoding for fine-tune downloads: "stored", "compressed" or "auto"
    #: (compressed when a cached build exists, otherwise stored).
    archive_encoding: str = "auto"
    #: Build compressed archives in the background when checkpoints arrive.
    archive_prebuild: bool = False
    #: zstd level of compressed archive builds (1-22).
    archive_level: int = 3
    #: Threads one compressed archive build uses.
    archive_threads: int = 2
    #: Seconds a replica's claim on an archive build lasts without renewal; a build whose
    #: builder died is taken over by another replica after this long.
    archive_build_lease: int = 60
    #: Signing keys "kid:secret,kid2:secret2"; the first signs, all verify. Empty: a key
    #: generated once and kept in the data directory (one machine only; required with a
    #: PostgreSQL catalog, where replicas must share keys).
    signing_keys: str = ""
    #: How long a web console sign-in lasts, seconds.
    console_session_ttl: int = 12 * 3600
    #: Seconds between garbage collections inside ``serve`` (each replica waits this ±10 %,
    #: and one replica at a time collects). 0: never (``weightport gc`` still works).
    gc_interval: int = 3600
    #: Seconds a blob must have been unreferenced before garbage collection deletes it:
    #: downloads of a deleted model that are still running keep working this long.
    gc_grace: int = 86400
    #: Seed the demo model and fine-tune on first start.
    seed_demo: bool = False
    #: Server log level: debug, info, warning or error.
    log_level: str = "info"
    #: The access log: one line per request, ``logfmt`` or ``json``; ``off`` writes none.
    access_log: str = "logfmt"
    #: Where access lines go: empty for stderr, else this file (appended to).
    access_log_file: str = ""
    #: Lowest level of access lines written: ``debug`` adds health probes, ``warning`` keeps
    #: only 5xx answers.
    access_log_level: str = "info"
    #: Serve Prometheus metrics at ``/metrics``.
    metrics: bool = True
    #: ``HOST:PORT`` to serve ``/metrics`` on, without a key (bind it to an internal address).
    #: Empty: ``/metrics`` on the main port, for keys of the admin account only.
    metrics_listen: str = ""
    #: Record who downloaded what in the catalog's audit log.
    audit_log: bool = True
    #: Days audit records are kept; 0 keeps them for ever.
    audit_retention_days: int = 90
    #: Seconds within which one key's requests for one file from one client address count as
    #: one download (the ranges of a parallel or resumed download).
    audit_window: int = 300
    #: Seconds running downloads may take to finish after SIGTERM before they are cut.
    shutdown_grace: int = 30

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    def validate(self) -> Settings:
        if self.archive_encoding not in {"stored", "compressed", "auto"}:
            raise InvalidArgument(
                "archive_encoding must be stored, compressed or auto, "
                f"not {self.archive_encoding!r}"
            )
        for name in (
            "download_url_ttl",
            "upload_url_ttl",
            "max_ranges",
            "archive_threads",
            "s3_presign_ttl",
            "s3_max_put_size",
            "staging_max_age",
            "console_session_ttl",
            "archive_build_lease",
            "workers",
            "header_timeout",
            "body_timeout",
            "send_timeout",
        ):
            if getattr(self, name) <= 0:
                raise InvalidArgument(f"{name} must be positive")
        for name in ("revocation_delay", "max_computed_downloads", "gc_interval", "gc_grace"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must not be negative")
        if not 1 <= self.archive_level <= 22:
            raise InvalidArgument("archive_level must be between 1 and 22")
        if self.access_log not in ACCESS_LOG_FORMATS:
            raise InvalidArgument(
                f"access_log must be logfmt, json or off, not {self.access_log!r}"
            )
        if self.access_log_level.upper() not in LOG_LEVELS:
            raise InvalidArgument(
                f"access_log_level must be debug, info, warning or error, "
                f"not {self.access_log_level!r}"
            )
        if self.metrics_listen:
            parse_listen(self.metrics_listen, "metrics_listen")
        for name in ("audit_retention_days", "shutdown_grace"):
            if getattr(self, name) < 0:
                raise InvalidArgument(f"{name} must not be negative")
        if self.audit_window <= 0:
            raise InvalidArgument("audit_window must be positive")
        return self


ACCESS_LOG_FORMATS = ("logfmt", "json", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def parse_listen(text: str, name: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[IPv6]:PORT`` for IPv6) as (host, port); :class:`InvalidArgument`
    naming the setting ``name`` otherwise."""
    host, colon, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise InvalidArgument(f"{name} must be HOST:PORT (e.g. 127.0.0.1:9700), not {text!r}")
    return host, int(port)


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}


def _coerce(name: str, raw: Any) -> Any:
    kind = _FIELDS[name].type
    if kind in ("bool", bool):
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise InvalidArgument(f"{name}: {raw!r} is not a boolean (use true/false)")
    if kind in ("int", int):
        if isinstance(raw, bool):
            raise InvalidArgument(f"{name}: {raw!r} is not an integer")
        try:
            return int(raw)
        except (TypeError, ValueError):
            raise InvalidArgument(f"{name}: {raw!r} is not an integer") from None
    if kind in ("Path", Path):
        return Path(str(raw)).expanduser()
    if not isinstance(raw, str):
        raise InvalidArgument(f"{name}: {raw!r} is not a string")
    return raw


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as exc:
        raise InvalidArgument(f"config file {path}: {exc}") from exc
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return data


def load_settings(
    overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Resolve settings from arguments, environment, config file and defaults, in that order.

    ``overrides`` holds explicit arguments; ``None`` values mean "not given".
    """
    env = os.environ if environ is None else environ
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise InvalidArgument(f"unknown setting(s) {', '.join(unknown)}")
    from_env = {
        name: env[ENV_PREFIX + name.upper()] for name in _FIELDS if ENV_PREFIX + name.upper() in env
    }
    data_dir = Path(
        str(given.get("data_dir") or from_env.get("data_dir") or Settings.data_dir)
    ).expanduser()
    config_path = Path(env.get(ENV_PREFIX + "CONFIG", str(data_dir / CONFIG_FILE_NAME)))
    merged: dict[str, Any] = {}
    merged.update(_from_file(config_path))
    merged.update(from_env)
    merged.update(given)
    values = {name: _coerce(name, raw) for name, raw in merged.items()}
    return Settings(**values).validate()


def settings_env(settings: Settings) -> dict[str, str]:
    """Every setting as the ``WEIGHTPORT_*`` environment that reproduces it exactly (for the
    worker processes of ``serve --workers``)."""
    return {ENV_PREFIX + name.upper(): _as_text(getattr(settings, name)) for name in _FIELDS}


def _as_text(value: object) -> str:
    """A setting's value as its environment variable spells it."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class SettingDoc:
    """One setting as the documentation shows it."""

    name: str
    env: str
    default: str
    help: str


def documented_settings() -> list[SettingDoc]:
    """Every setting with its environment variable, default and the ``#:`` comment above
    its field in :class:`Settings` (the one place settings are explained)."""
    comments: list[str] = []
    helps: dict[str, str] = {}
    for line in inspect.getsource(Settings).splitlines():
        text = line.strip()
        if text.startswith("#:"):
            comments.append(text[2:].strip())
            continue
        name = text.split(":", 1)[0]
        if name in _FIELDS and not text.startswith(("def ", "@")):
            helps[name] = " ".join(comments)
        comments = []
    defaults = Settings()
    return [
        SettingDoc(name, ENV_PREFIX + name.upper(), _as_text(getattr(defaults, name)), helps[name])
        for name in _FIELDS
    ]
