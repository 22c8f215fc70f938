"""What a full disk must look like to a Fireworks caller (the tmpfs and ``fill`` that make
one live in conftest)."""

from __future__ import annotations

import httpx


def assert_insufficient_storage(response: httpx.Response) -> None:
    """A 507 RESOURCE_EXHAUSTED in the Fireworks envelope that says the disk is full."""
    assert response.status_code == 507, response.text
    body = response.json()
    assert set(body) == {"code", "message", "details"}
    assert body["code"] == 8  # RESOURCE_EXHAUSTED
    assert "disk is full" in body["message"]
