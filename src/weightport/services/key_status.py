"""Whether the API key that minted a signed URL is still active, cheaply, on the byte path.

Every signed URL names the key that minted it (bound into the signature, so it cannot be
swapped). Serving a URL asks this cache whether that key is still active. The catalog is the
truth: a "still active" answer is reused for at most ``ttl`` seconds, so a revocation takes
effect on every replica within ``ttl`` (the ``revocation_delay`` setting). A "revoked"
answer is kept for good — keys are never un-revoked — within a bounded number of entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from weightport.catalog import accounts
from weightport.catalog.db import Catalog
from weightport.errors import SignatureRevoked

#: Keys remembered at once; the least recently used are forgotten first (and re-read).
MAX_ENTRIES = 10_000


@dataclass(frozen=True)
class _Status:
    active: bool
    checked_at: float


class KeyStatusCache:
    """Refuses URLs minted by revoked keys; a catalog read per key at most every ``ttl`` s."""

    def __init__(
        self,
        catalog: Catalog,
        ttl: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = MAX_ENTRIES,
    ) -> None:
        self._catalog = catalog
        self._ttl = ttl
        self._clock = clock
        self._max_entries = max_entries
        # Only touched from the event loop (no awaits between a read and its write), so no
        # lock; two concurrent misses for one key just both read the catalog.
        self._entries: OrderedDict[str, _Status] = OrderedDict()

    async def require_active(self, key_id: str) -> None:
        """Return if ``key_id`` is active (as of at most ``ttl`` ago); raise otherwise.

        Raises :class:`~weightport.errors.SignatureRevoked` (403) for a revoked or deleted key.
        """
        status = self._entries.get(key_id)
        if status is not None:
            self._entries.move_to_end(key_id)
        if status is None or (status.active and self._clock() - status.checked_at >= self._ttl):
            checked_at = self._clock()
            active = await self._catalog.run(lambda s: accounts.key_is_active(s, key_id))
            status = _Status(active, checked_at)
            self._entries[key_id] = status
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        if not status.active:
            raise SignatureRevoked(
                "signed URL: the API key that requested it has been revoked; request a fresh "
                "URL with an active key"
            )
