"""The server stacks the compatibility suites run on, defined in one place.

- ``embedded``: the default single-directory server (SQLite catalog, local blob store);
- ``scaled``: the same server on shared infrastructure, as replicas run it: a PostgreSQL
  catalog, an S3 store (SeaweedFS) for blobs, and signing keys from the environment.

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
        postgres = request.getfixturevalue("postgres")
        # Each server its own prefix and database: several servers share one bucket and one
        # PostgreSQL cluster without seeing each other's data.
        return {
            **weed.env(),
            "WEIGHTPORT_STORAGE_URL": f"s3://{weed.bucket}/{secrets.token_hex(6)}",
            "WEIGHTPORT_S3_ENDPOINT": weed.endpoint,
            "WEIGHTPORT_DATABASE_URL": postgres.create_database(),
            "WEIGHTPORT_SIGNING_KEYS": f"k1:{secrets.token_urlsafe(32)}",
        }
    raise ValueError(f"unknown stack {name!r}")
