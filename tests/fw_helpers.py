"""Small HTTP helpers for tests that speak the Fireworks API directly (httpx)."""

from __future__ import annotations

import threading
from typing import Any

import httpx


class FireworksApi:
    """The model API of one account, as raw HTTP (so tests see status codes and bodies)."""

    def __init__(self, base_url: str, account: str, key: str) -> None:
        self.base = f"{base_url}/v1/accounts/{account}/models"
        self.account = account
        self.http = httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=60)

    def close(self) -> None:
        self.http.close()

    def create(self, model_id: str, **fields: Any) -> httpx.Response:
        return self.http.post(self.base, json={"modelId": model_id, "model": fields})

    def upload_urls(self, model_id: str, sizes: dict[str, int]) -> dict[str, str]:
        response = self.http.post(
            f"{self.base}/{model_id}:getUploadEndpoint", json={"filenameToSize": sizes}
        )
        response.raise_for_status()
        urls: dict[str, str] = response.json()["filenameToSignedUrls"]
        return urls

    def validate(self, model_id: str) -> httpx.Response:
        return self.http.get(f"{self.base}/{model_id}:validateUpload")

    def create_at_once(self, model_id: str, times: int) -> list[int]:
        """The statuses of ``times`` creates of one model id sent at the same moment, each
        on a connection of its own (so several servers or workers may take them)."""
        start = threading.Barrier(times)
        answers: list[int] = []

        def create() -> None:
            with httpx.Client(headers=self.http.headers, timeout=60) as http:
                start.wait()
                answers.append(http.post(self.base, json={"modelId": model_id}).status_code)

        threads = [threading.Thread(target=create) for _ in range(times)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return answers

    def download_urls(self, model_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/{model_id}:getDownloadEndpoint")
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def publish(
        self, model_id: str, files: dict[str, bytes], kind: str = "HF_BASE_MODEL"
    ) -> dict[str, str]:
        """Create → upload → validate; returns the signed download URLs."""
        assert self.create(model_id, kind=kind).status_code == 200
        urls = self.upload_urls(model_id, {p: len(d) for p, d in files.items()})
        for path, url in urls.items():
            assert httpx.put(url, content=files[path]).status_code == 200
        assert self.validate(model_id).status_code == 200
        signed: dict[str, str] = self.download_urls(model_id)["filenameToSignedUrls"]
        return signed
