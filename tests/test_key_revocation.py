"""Revoking an API key revokes the signed URLs it minted (download and upload), within the
``revocation_delay``; other keys' URLs are unaffected, and the key binding cannot be edited."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from tests.conftest import LiveServer
from tests.fw_helpers import FireworksApi
from weightport.catalog import accounts
from weightport.catalog.db import Catalog
from weightport.errors import SignatureRevoked
from weightport.services.key_status import KeyStatusCache

DELAY_S = 1


def _key_id(secret: str) -> str:
    return secret.split("_")[1]


def _revoke_with_cli(server: LiveServer, key_id: str) -> None:
    data = ["--data-dir", str(server.data_dir)]
    subprocess.run(
        [sys.executable, "-m", "weightport", "keys", "revoke", key_id, *data],
        check=True,
        capture_output=True,
    )


def _assert_revoked(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    body = response.json()
    assert body["code"] == 7 and "revoked" in body["message"]


def test_revoked_keys_urls_are_refused(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    env = {"WEIGHTPORT_REVOCATION_DELAY": str(DELAY_S)}
    server = server_factory(tmp_path / "data", demo=False, extra_env=env).start()
    revoked_key, kept_key = server.new_account("team"), server.new_account("team")
    doomed = FireworksApi(server.base_url, "team", revoked_key)
    kept = FireworksApi(server.base_url, "team", kept_key)
    files = {"config.json": b"{}", "w.bin": os.urandom(100_000)}
    doomed_downloads = doomed.publish("m", files)
    kept_downloads = kept.download_urls("m")["filenameToSignedUrls"]
    for api, model in ((doomed, "up-doomed"), (kept, "up-kept")):
        assert api.create(model, kind="CUSTOM_MODEL").status_code == 200
    payload = os.urandom(50_000)
    doomed_upload = doomed.upload_urls("up-doomed", {"w.bin": len(payload)})["w.bin"]
    kept_upload = kept.upload_urls("up-kept", {"w.bin": len(payload)})["w.bin"]
    # Served once, so the key's "active" status is in the cache when the revocation lands.
    assert httpx.get(doomed_downloads["w.bin"]).content == files["w.bin"]

    _revoke_with_cli(server, _key_id(revoked_key))
    time.sleep(DELAY_S + 0.2)  # past the cache's lifetime: the catalog is asked again

    _assert_revoked(httpx.get(doomed_downloads["w.bin"]))
    assert httpx.head(doomed_downloads["w.bin"]).status_code == 403
    _assert_revoked(httpx.put(doomed_upload, content=payload))
    blob = hashlib.sha256(payload).hexdigest()
    assert not (tmp_path / "data" / "store" / "blobs" / blob[:2] / blob[2:4] / blob).exists()

    assert httpx.get(kept_downloads["w.bin"]).content == files["w.bin"]
    assert httpx.put(kept_upload, content=payload).status_code == 200
    assert kept.validate("up-kept").status_code == 200
    assert doomed.http.get(doomed.base).status_code == 401  # the key itself, of course

    # The key id is signed: naming the surviving key instead breaks the signature.
    swapped = doomed_downloads["w.bin"].replace(
        f"X-Wp-key={_key_id(revoked_key)}", f"X-Wp-key={_key_id(kept_key)}"
    )
    assert swapped != doomed_downloads["w.bin"]
    refused = httpx.get(swapped)
    assert refused.status_code == 403 and "does not match" in refused.json()["message"]
    doomed.close()
    kept.close()


def test_status_is_cached_for_the_delay_and_revocation_is_final(tmp_path: Path) -> None:
    catalog = Catalog.open(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    now = [1000.0]
    cache = KeyStatusCache(catalog, ttl=5, clock=lambda: now[0])

    def issue(session: Session) -> accounts.IssuedKey:
        accounts.ensure_account(session, "acct")
        return accounts.create_key(session, "acct")

    key = catalog.call(issue)

    async def scenario() -> None:
        await cache.require_active(key.id)
        catalog.call(lambda s: accounts.revoke_key(s, key.id))
        now[0] += 4.9
        await cache.require_active(key.id)  # within the delay: the cached answer stands
        now[0] += 0.1
        with pytest.raises(SignatureRevoked):
            await cache.require_active(key.id)
        now[0] += 10_000
        with pytest.raises(SignatureRevoked):
            await cache.require_active(key.id)
        with pytest.raises(SignatureRevoked):
            await cache.require_active("no-such-key")

    asyncio.run(scenario())
    catalog.close()
