"""Uploading a local model directory through the Fireworks flow: create → upload → validate.

Speaks only HTTP (the calls the official client makes, plus weightport's ``filenameToSha256``
in ``getUploadEndpoint``). Interrupted pushes resume: files that already landed *with the
local sha256* are not re-sent; any other bytes under the same name are replaced.

A push succeeds only if, after validation, the server reports every local file with the
local sha256 (and no other file): a concurrent push of the same model id, or bytes another
client left there, can make it fail — clearly — but never report READY for foreign bytes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import urllib3
from urllib3.exceptions import HTTPError

from weightport.client.errors import ApiError, BadRequest, DownloadError, error_from_response
from weightport.client.http import retry_after, unreachable

#: google.rpc.Code of "not yet": validateUpload says so while files are still landing.
FAILED_PRECONDITION = 9

#: Called with the number of bytes just sent (or hashed), from worker threads.
Progress = Callable[[int], None]

READY = "READY"
HASH_CHUNK = 1 << 20


class PushError(DownloadError):
    """The push cannot go on, or the server does not hold what was pushed."""


@dataclass(frozen=True)
class LocalFile:
    """A file to push: where it is, its size and its sha256."""

    path: Path
    size: int
    sha256: str


def _sha256_of(path: Path, progress: Progress) -> str:
    digest = hashlib.sha256()
    with path.open("rb", buffering=0) as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
            progress(len(chunk))
    return digest.hexdigest()


def describe_files(
    files: Mapping[str, Path], progress: Progress, *, parallel: int = 4
) -> dict[str, LocalFile]:
    """Size and sha256 of every file (hashed in ``parallel`` threads: hashlib frees the GIL)."""

    def describe(item: tuple[str, Path]) -> tuple[str, LocalFile]:
        relpath, path = item
        size = path.stat().st_size
        return relpath, LocalFile(path, size, _sha256_of(path, progress))

    with ThreadPoolExecutor(parallel) as pool:
        return dict(pool.map(describe, sorted(files.items())))


@dataclass(frozen=True)
class PushTarget:
    base_url: str
    api_key: str
    account: str
    model_id: str

    def model_url(self, verb: str = "") -> str:
        url = (
            f"{self.base_url.rstrip('/')}/v1/accounts/{quote(self.account, safe='')}/models/"
            f"{quote(self.model_id, safe='')}"
        )
        return f"{url}:{verb}" if verb else url


def _chunks(fh: BinaryIO, progress: Progress, size: int = 1 << 20) -> Iterator[bytes]:
    """The file in chunks, reporting each one, so uploads can drive a progress bar."""
    while data := fh.read(size):
        progress(len(data))
        yield data


class ModelPusher:
    def __init__(self, target: PushTarget, *, parallel: int = 4) -> None:
        self.target = target
        self.parallel = parallel
        self.http = urllib3.PoolManager(
            maxsize=parallel, retries=urllib3.Retry(total=3, backoff_factor=0.5)
        )

    def api(self, method: str, url: str, body: Mapping[str, Any] | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.target.api_key}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = "application/json"
            data = json.dumps(body).encode()
        response = self._send(method, url, body=data, headers=headers)
        if response.status >= 400:
            error = error_from_response(response.status, response.data)
            error.retry_after = retry_after(response.headers)
            raise error
        return json.loads(response.data or b"{}")

    def _send(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        """One request; a server that cannot be reached raises TransferError, not urllib3's."""
        try:
            return self.http.request(method, url, **kwargs)
        except HTTPError as exc:
            raise unreachable(url, exc) from exc

    def ensure_model(self, fields: Mapping[str, Any]) -> str:
        """Create the model, or reuse it if it already exists; returns its state."""
        target = self.target
        collection = f"{target.base_url.rstrip('/')}/v1/accounts/{quote(target.account)}/models"
        try:
            self.api("POST", collection, {"modelId": target.model_id, "model": dict(fields)})
        except ApiError as exc:
            if exc.status != 409:  # 409: it exists; resume it (or verify it, if READY)
                raise
        return self.state()

    def state(self) -> str:
        """The model's state on the server (``UPLOADING``, ``READY``, …)."""
        return str(self.api("GET", self.target.model_url()).get("state", ""))

    def push(self, files: Mapping[str, LocalFile], progress: Progress) -> list[str]:
        """Upload → validate → verify into the model :meth:`ensure_model` made; the warnings.

        A model that is already READY is accepted only if it holds exactly these files.
        Raises :class:`PushError` when the server ends up holding anything else.
        """
        if self.state() == READY:
            self.verify(files)
            progress(sum(f.size for f in files.values()))
            return []
        try:
            self.upload_files(files, progress)
        except BadRequest as exc:
            # Validated meanwhile by another push: fine if it holds our bytes, else say so.
            if self.state() == READY:
                self.verify(files)
                return []
            if exc.code == FAILED_PRECONDITION:  # our upload URLs were superseded
                raise PushError(
                    f"{exc.message} — another upload to model {self.target.account}/"
                    f"{self.target.model_id} re-declared its files while this push ran; push "
                    "again to replace them, or under a new id"
                ) from None
            raise
        warnings = self.validate()
        self.verify(files)
        return warnings

    def verify(self, files: Mapping[str, LocalFile]) -> None:
        """Check that the READY model holds exactly ``files`` (paths and sha256s)."""
        answer = self.api(
            "GET",
            self.target.model_url("getDownloadEndpoint")
            + "?readMask=filenameToSize%2CfilenameToSha256",
        )
        remote = answer.get("filenameToSha256")
        name = f"{self.target.account}/{self.target.model_id}"
        if not isinstance(remote, dict):
            raise PushError(
                f"{name}: the server does not report its files' sha256 (filenameToSha256), so "
                "the push cannot be verified"
            )
        differing = sorted(p for p, f in files.items() if p in remote and remote[p] != f.sha256)
        missing = sorted(set(files) - set(remote))
        extra = sorted(set(remote) - set(files))
        if differing or missing or extra:
            problems = [
                f"{label}: {', '.join(paths[:5])}{' …' if len(paths) > 5 else ''}"
                for label, paths in (
                    ("different bytes", differing),
                    ("missing", missing),
                    ("not in the local directory", extra),
                )
                if paths
            ]
            raise PushError(
                f"model {name} is READY but does not hold the files pushed ("
                + "; ".join(problems)
                + "): it was completed with other files (by a concurrent push of this id, "
                "or an earlier one); models are immutable, push under a new id"
            )

    def upload_files(self, files: Mapping[str, LocalFile], progress: Progress) -> int:
        """Declare every file with its sha256, PUT the ones not landed; returns bytes sent."""
        body = {
            "filenameToSize": {path: str(f.size) for path, f in files.items()},
            "filenameToSha256": {path: f.sha256 for path, f in files.items()},
        }
        urls: dict[str, str] = self.api("POST", self.target.model_url("getUploadEndpoint"), body)[
            "filenameToSignedUrls"
        ]
        unknown = sorted(set(urls) - set(files))
        if unknown:
            raise PushError(f"the server asked for files that were not declared: {unknown[:5]}")
        progress(sum(f.size for p, f in files.items() if p not in urls))

        def put(path: str) -> int:
            size = files[path].size
            with files[path].path.open("rb") as fh:
                response = self._send(
                    "PUT",
                    urls[path],
                    body=_chunks(fh, progress),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Length": str(size),
                        "x-goog-content-length-range": f"{size},{size}",
                    },
                    retries=False,
                    preload_content=True,
                )
            if response.status != 200:
                error = error_from_response(response.status, response.data, signed_url=True)
                raise type(error)(f"{path}: {error.message}", status=error.status, code=error.code)
            return size

        with ThreadPoolExecutor(self.parallel) as pool:
            return sum(pool.map(put, sorted(urls)))

    def import_s3(self, uri: str) -> dict[str, Any]:
        """Ask the server to import an S3 folder into the model in place (``:import``);
        returns the model."""
        operation = self.api(
            "POST", self.target.model_url("import"), {"awsS3Source": {"s3Uri": uri}}
        )
        model: dict[str, Any] = operation.get("response") or {}
        return model

    def validate(self, *, attempts: int = 3) -> list[str]:
        """Call validateUpload until READY (the server may still be landing files).

        While the server says it is still working on the upload (FAILED_PRECONDITION with
        ``Retry-After``: hashing files PUT straight to an object store), keep polling as
        it asks; other FAILED_PRECONDITION answers get ``attempts`` tries.
        """
        attempt = 0
        while True:
            try:
                return list(self.api("GET", self.target.model_url("validateUpload"))["warnings"])
            except BadRequest as exc:
                if exc.code != FAILED_PRECONDITION:
                    raise
                if exc.retry_after is not None:
                    time.sleep(min(exc.retry_after, 10.0))
                    continue
                attempt += 1
                if attempt >= attempts:
                    raise
                time.sleep(min(0.2 * 2**attempt, 2.0))
