"""The server stacks the compatibility suites run on, defined in one place.

- ``embedded``: the default single-directory server (SQLite catalog, local blob store);
- ``scaled``: the same server on shared infrastructure: an S3 store (SeaweedFS) for blobs.
  (The catalog joins it here when the PostgreSQL fixture exists.)

A stack is the environment a ``weightport serve`` process gets; the fixtures that start the
infrastructure are requested only by stacks that need them.
"""

from __future__ import annotations

import secrets

import pytest

STACKS = ("embedded", "scaled")


def stack_env(name: str, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a server of stack ``name``; starts what it needs on first use."""
    if name == "embedded":
        return {}
    if name == "scaled":
        weed = request.getfixturevalue("seaweedfs")
        # Each server its own prefix: several servers share one bucket without seeing
        # each other's blobs.
        return {
            **weed.env(),
            "WEIGHTPORT_STORAGE_URL": f"s3://{weed.bucket}/{secrets.token_hex(6)}",
            "WEIGHTPORT_S3_ENDPOINT": weed.endpoint,
        }
    raise ValueError(f"unknown stack {name!r}")
