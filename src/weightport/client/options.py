"""Tuning knobs of a download, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from weightport.client.errors import ConfigurationError

MiB = 1 << 20


@dataclass(frozen=True)
class DownloadOptions:
    """Tuning knobs; the defaults suit multi-GB weights on fast links.

    Why 8 connections of 64 MiB parts (``bench/downloader.py``, BENCHMARKS.md): on loopback,
    where one 2-core machine also runs the server, 2 to 16 connections and 16 to 256 MiB
    parts traded places from run to run within the noise, so loopback does not choose. Real
    links do: a single connection is held back by its TCP window and by per-connection
    limits of object stores and CDNs, which is why parallel downloaders (hf_transfer,
    aria2c -x) use about 8. 64 MiB parts are few requests per GB, yet a slow connection
    holds up at most one part at the end.
    """

    #: Concurrent connections (and worker threads) for the whole download.
    connections: int = 8
    #: Bytes per ranged request (a resume continues inside a part, from its last byte).
    part_size: int = 64 * MiB
    #: Read buffer per worker, reused for every read.
    buffer_size: int = 1 * MiB
    #: Consecutive failed attempts per part (without progress) before giving up.
    retries: int = 5
    #: How many times fresh signed URLs may be fetched after a 403.
    url_refreshes: int = 5
    #: How many times one file may start over because the server's bytes changed.
    restarts: int = 2
    #: Hash while downloading (True) or in one pass after the file is complete (False).
    hash_while_downloading: bool = True
    #: Seconds between checkpoints of resume state.
    checkpoint_interval: float = 1.0
    check_free_space: bool = True
    #: fdatasync partial files before recording progress even when a sha256 will re-check
    #: every byte anyway (see weightport.client.state on durability).
    always_sync: bool = False

    def validate(self) -> DownloadOptions:
        """Return self, or raise :class:`ConfigurationError` for unusable values."""
        if self.connections < 1 or self.connections > 256:
            raise ConfigurationError("connections must be between 1 and 256")
        if self.part_size < 64 * 1024:
            raise ConfigurationError("part size must be at least 64 KiB")
        if self.buffer_size < 4096:
            raise ConfigurationError("buffer size must be at least 4 KiB")
        if min(self.retries, self.url_refreshes, self.restarts) < 0:
            raise ConfigurationError("retry budgets cannot be negative")
        return self
