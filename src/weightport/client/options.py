"""Tuning knobs of a download, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from weightport.client.errors import ConfigurationError

MiB = 1 << 20


#: Automatic connection counts: near servers (loopback, a LAN) and far ones.
NEAR_CONNECTIONS = 4
FAR_CONNECTIONS = 32
#: A server whose round trip (a probe's, or the listing's) took at least this long (seconds)
#: counts as far.
FAR_RTT = 0.010
#: Automatic part sizes stay within these bounds.
MIN_AUTO_PART = 8 * MiB
MAX_AUTO_PART = 64 * MiB


@dataclass(frozen=True)
class Tuning:
    """What a download settles on once the server has answered its listing (or probes)."""

    connections: int
    part_size: int
    #: The path's round trip, seconds: the quickest probe's, or the listing's when the files
    #: needed no probe (one request, connection set-up included).
    rtt: float


@dataclass(frozen=True)
class DownloadOptions:
    """Tuning knobs; the defaults (``None``: automatic) suit multi-GB weights on any link.

    Connections (``bench/downloader.py``, ``bench/downloader_link.py``, BENCHMARKS.md): a
    near server (loopback, a LAN) does not cap a connection, so more of them only cost CPU:
    every stream after the first in one file arrives ahead of the digest and is read back
    for the hash, and concurrent writers to one file contend for its lock. On loopback, where
    one 2-core machine also runs the server, 4 connections for a four-file model took 13-33 %
    less client CPU per GB than 8 (three interleaved runs), and 2 did as well as 4; a near
    server gets 4, so a model of one large file still spreads over both cores. On a long path
    every connection is held back by its TCP window and by per-connection limits of object
    stores and CDNs, so throughput is connections × the per-connection rate: a server whose
    round trip takes :data:`FAR_RTT` or more gets 32 (aria2c -x8 on four files opens as
    many). Through an emulated 40 ms, 25 MB/s-per-connection path, 32 connections carried
    223 MB/s where 8 carried 121 (``bench/downloader_link.py``). On a loaded machine even a
    loopback probe can take 10 ms; 32 connections there measured no worse than 8.

    Parts: about two per connection for the whole download, within 8-64 MiB. Fewer, larger
    requests waste fewer round trips; two rounds let the in-order hash follow the first
    round while the second downloads; 64 MiB caps what a slow connection holds. A worker
    with nothing left to take splits the largest part still downloading, so the last
    connections finish together instead of waiting for one straggler.
    """

    #: Concurrent connections (and worker threads); ``None``: chosen from the path's RTT.
    connections: int | None = None
    #: Bytes per ranged request (a resume continues inside a part, from its last byte);
    #: ``None``: chosen from the download's size and the connections.
    part_size: int | None = None
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
        if self.connections is not None and not 1 <= self.connections <= 256:
            raise ConfigurationError("connections must be between 1 and 256")
        if self.part_size is not None and self.part_size < 64 * 1024:
            raise ConfigurationError("part size must be at least 64 KiB")
        if self.buffer_size < 4096:
            raise ConfigurationError("buffer size must be at least 4 KiB")
        if min(self.retries, self.url_refreshes, self.restarts) < 0:
            raise ConfigurationError("retry budgets cannot be negative")
        return self

    @property
    def most_connections(self) -> int:
        """The most connections this download may open (what the pool must hold)."""
        return self.connections or FAR_CONNECTIONS

    def tune(self, rtt: float, remaining: int) -> Tuning:
        """Settle connections and part size for ``remaining`` bytes over a path of ``rtt``."""
        connections = self.connections
        if connections is None:
            connections = FAR_CONNECTIONS if rtt >= FAR_RTT else NEAR_CONNECTIONS
        part_size = self.part_size
        if part_size is None:
            share = remaining // (2 * connections)
            part_size = min(MAX_AUTO_PART, max(MIN_AUTO_PART, share // MiB * MiB))
        return Tuning(connections, part_size, rtt)
