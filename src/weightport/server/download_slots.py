"""A per-account cap on concurrent computed downloads, in one server process.

A computed download (a Together archive: merged weights, an adapter or a checkpoint, each a
view assembled while it is sent) costs the server a few MiB of buffers and CPU for as long
as it runs, unlike a stored file, which the kernel sends. One account may run at most
``max_computed_downloads`` at once here; one more is answered 429 with ``Retry-After``, in
the caller's envelope. The count is per process: behind a balancer, each replica allows
that many.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from weightport.errors import TooManyRequests

#: What a 429 suggests waiting. Computed downloads last seconds to hours, so no wait is
#: right for all; a few seconds keeps a retrying client responsive without hammering.
RETRY_AFTER_S = 5


class DownloadSlots:
    """Counts computed downloads per account; used only on the event loop (no lock)."""

    def __init__(self, per_account: int, *, on_release: Callable[[], None] | None = None) -> None:
        self.per_account = per_account
        self._active: Counter[str] = Counter()
        self._on_release = on_release

    def active(self, account: str) -> int:
        """Computed downloads the account runs now."""
        return self._active[account]

    @contextmanager
    def hold(self, account: str) -> Iterator[None]:
        """One slot of ``account`` for the duration of the block, or :class:`TooManyRequests`."""
        limit = self.per_account
        if limit and self._active[account] >= limit:
            raise TooManyRequests(
                f"account {account!r} already runs {limit} archive downloads on this server "
                f"(max_computed_downloads); retry in {RETRY_AFTER_S} s or once one finishes",
                retry_after=RETRY_AFTER_S,
            )
        self._active[account] += 1
        try:
            yield
        finally:
            self._active[account] -= 1
            if not self._active[account]:
                del self._active[account]
            if self._on_release is not None:
                self._on_release()
