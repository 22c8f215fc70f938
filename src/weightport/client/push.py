"""Uploading a local model directory through the Fireworks flow: create → upload → validate.

Speaks only HTTP (the same calls the official client makes), so it works against any
weightport server. Interrupted pushes resume: files that already landed are not re-sent.
"""

from __future__ import annotations

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
from weightport.client.http import unreachable

#: google.rpc.Code of "not yet": validateUpload says so while files are still landing.
FAILED_PRECONDITION = 9

#: Called with the number of bytes just sent, from upload threads.
Progress = Callable[[int], None]


class PushError(DownloadError):
    """The push cannot go on (e.g. the model is already READY)."""


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
            raise error_from_response(response.status, response.data)
        return json.loads(response.data or b"{}")

    def _send(self, method: str, url: str, **kwargs: Any) -> urllib3.BaseHTTPResponse:
        """One request; a server that cannot be reached raises TransferError, not urllib3's."""
        try:
            return self.http.request(method, url, **kwargs)
        except HTTPError as exc:
            raise unreachable(url, exc) from exc

    def ensure_model(self, fields: Mapping[str, Any]) -> str:
        """Create the model, or reuse it if it exists and is still UPLOADING; its state."""
        target = self.target
        collection = f"{target.base_url.rstrip('/')}/v1/accounts/{quote(target.account)}/models"
        try:
            self.api("POST", collection, {"modelId": target.model_id, "model": dict(fields)})
        except ApiError as exc:
            if exc.status != 409:  # 409: it exists; resume it if still UPLOADING
                raise
        state = str(self.api("GET", target.model_url()).get("state", ""))
        if state == "READY":
            raise PushError(
                f"model {target.account}/{target.model_id} is already READY; models are "
                "immutable, push under a new id"
            )
        return state

    def upload_files(self, files: Mapping[str, Path], progress: Progress) -> int:
        """Declare every file, PUT the ones not yet landed; returns bytes sent."""
        sizes = {path: str(local.stat().st_size) for path, local in files.items()}
        urls: dict[str, str] = self.api(
            "POST", self.target.model_url("getUploadEndpoint"), {"filenameToSize": sizes}
        )["filenameToSignedUrls"]
        skipped = sum(int(sizes[p]) for p in files if p not in urls)
        progress(skipped)

        def put(path: str) -> int:
            size = int(sizes[path])
            with files[path].open("rb") as fh:
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

    def validate(self, *, attempts: int = 3) -> list[str]:
        """Call validateUpload until READY (the server may still be landing files)."""
        for attempt in range(attempts):
            try:
                return list(self.api("GET", self.target.model_url("validateUpload"))["warnings"])
            except BadRequest as exc:
                if exc.code != FAILED_PRECONDITION or attempt == attempts - 1:
                    raise
                time.sleep(min(0.2 * 2**attempt, 2.0))
        raise PushError("validateUpload did not succeed")
