"""What every handler needs, built once per server process and stored on the app."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from aiohttp import web

from weightport.catalog.db import Catalog
from weightport.config import Settings
from weightport.server.download_slots import DownloadSlots
from weightport.server.memory import MemoryReturn
from weightport.server.read_ahead import ReadAheadPool
from weightport.services.archive_builds import ArchiveBuilder
from weightport.services.audit import AuditLog
from weightport.services.finetune_archives import PlanCache
from weightport.services.hub.files import RevisionFilesCache
from weightport.services.key_status import KeyStatusCache
from weightport.services.staged_uploads import StagedLanding
from weightport.signing import UrlSigner
from weightport.storage.base import BlobStore, Presigner


@dataclass
class DownloadTally:
    """Download bodies being sent now, and how many were cut short while stopping (touched
    only on the event loop)."""

    sending: int = 0
    cut_while_stopping: int = 0
    stopping: bool = False


@dataclass
class ServerContext:
    settings: Settings
    catalog: Catalog
    store: BlobStore
    signer: UrlSigner
    builder: ArchiveBuilder
    key_status: KeyStatusCache
    plans: PlanCache
    #: The per-account cap on computed downloads (429 beyond it).
    slots: DownloadSlots
    memory: MemoryReturn
    read_ahead: ReadAheadPool = field(default_factory=ReadAheadPool)
    hub_files: RevisionFilesCache = field(default_factory=RevisionFilesCache)
    staged: StagedLanding = field(default_factory=StagedLanding)
    #: The download audit log; None when the ``audit_log`` setting is off.
    audit: AuditLog | None = None
    downloads: DownloadTally = field(default_factory=DownloadTally)

    def __post_init__(self) -> None:
        # Decided once: an isinstance check against a runtime Protocol costs tens of
        # microseconds, paid for every URL of a 200-file listing otherwise.
        self._presigner = (
            self.store if isinstance(self.store, Presigner) and not self.settings.s3_proxy else None
        )

    def presigner(self) -> Presigner | None:
        """The store, when clients should talk to it directly: it presigns its own URLs and
        ``s3_proxy`` does not keep the bytes flowing through weightport."""
        return self._presigner

    def public_base(self, request: web.Request) -> str:
        """The scheme://host[:port] clients use to reach us (configured, else the request's)."""
        if self.settings.public_url:
            return self.settings.public_url.rstrip("/")
        return f"{request.scheme}://{request.host}"

    def close(self) -> None:
        """Write the audit log's last batch, cancel pending memory returns, stop background
        builds (handing a running one back), the read-ahead pool and the catalog."""
        if self.audit is not None:
            self.audit.close()
        self.memory.close()
        self.builder.close()
        self.read_ahead.close()
        self.catalog.close()

    @staticmethod
    def now() -> int:
        return int(time.time())


CONTEXT = web.AppKey("weightport_context", ServerContext)


def context_of(request: web.Request) -> ServerContext:
    # config_dict: also found from sub-applications (the web console is one).
    return request.config_dict[CONTEXT]
