"""Every Prometheus metric weightport exports, in one place.

Names follow Prometheus' conventions: a ``weightport_`` prefix, base units (seconds, bytes)
and ``_total`` on counters (added by prometheus-client). Every label takes values from a small
fixed set — route *templates*, never raw paths (which hold account and model ids); status
codes; the byte paths of :class:`BytePath`; error codes of :mod:`weightport.errors` — so the
number of series stays bounded whatever the traffic.

Counting is cheap (a lock and an addition; with ``serve --workers N`` a write into a
memory-mapped file), and the byte paths count once per response or per range, never per chunk.
"""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram, disable_created_metrics
from sqlalchemy.exc import SQLAlchemyError

from weightport.errors import SignatureInvalid, StorageError

# The *_created series (one per labelled child) only double the output; nothing uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

#: Request latency buckets, seconds: API calls take milliseconds, downloads up to hours.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    7200.0,
)
#: Archive build duration buckets, seconds (small adapters to 100 GB checkpoints).
BUILD_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0)


class BytePath(StrEnum):
    """Where a download's bytes come from: the label of the byte-path metrics."""

    #: A model's stored file through its signed URL (zero-copy from the local store).
    FILE = "file"
    #: A fine-tune archive in the stored encoding (raw zstd blocks computed per request).
    STORED_ARCHIVE = "stored_archive"
    #: A cached compressed archive build.
    COMPRESSED_ARCHIVE = "compressed_archive"
    #: A merged LoRA checkpoint's archive, merged on the fly.
    MERGED = "merged"
    #: A file through the Hugging Face Hub-compatible routes.
    HUB = "hub"


HTTP_REQUESTS = Counter(
    "weightport_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "weightport_http_request_duration_seconds",
    "Time from a request's arrival to the end of its response (the whole body for downloads).",
    ["method", "route"],
    buckets=LATENCY_BUCKETS,
)
BYTES_SERVED = Counter(
    "weightport_bytes_served",
    "Response body bytes sent by each byte path (counted as each response or range ends).",
    ["path"],
)
ACTIVE_DOWNLOADS = Gauge(
    "weightport_active_downloads",
    "Responses of a byte path sending their body right now.",
    ["path"],
    multiprocess_mode="livesum",
)
MERGE_BYTES = Counter(
    "weightport_merge_output_bytes",
    "Bytes of merged LoRA weights computed (rate over weightport_merge_seconds_total: "
    "merge throughput).",
)
MERGE_SECONDS = Counter(
    "weightport_merge_seconds",
    "Seconds spent computing merged LoRA weights, summed over merge threads.",
)
ARCHIVE_BUILDS_FINISHED = Counter(
    "weightport_archive_builds_finished",
    "Compressed archive builds this process finished, by outcome (ready, failed).",
    ["outcome"],
)
ARCHIVE_BUILD_SECONDS = Histogram(
    "weightport_archive_build_duration_seconds",
    "Duration of the compressed archive builds this process ran.",
    buckets=BUILD_BUCKETS,
)
SIGNED_URL_FAILURES = Counter(
    "weightport_signed_url_failures",
    "Signed URLs refused, by reason (signature_invalid, signature_expired, signature_revoked).",
    ["reason"],
)
ERRORS = Counter(
    "weightport_errors",
    "Catalog and blob store failures, by source (catalog, store) and error code.",
    ["source", "code"],
)
AUDIT_RECORDS_DROPPED = Counter(
    "weightport_audit_records_dropped",
    "Download audit records dropped because the catalog could not take them in time.",
)


def count_error(error: BaseException) -> None:
    """Count a refused signed URL or a blob store failure. (Catalog failures are counted where
    they are translated, :meth:`weightport.catalog.db.Catalog.call`; a store error caused by
    the catalog, its disk full, is not counted twice.)"""
    if isinstance(error, SignatureInvalid):
        SIGNED_URL_FAILURES.labels(error.code).inc()
    elif isinstance(error, StorageError) and not isinstance(error.__cause__, SQLAlchemyError):
        ERRORS.labels("store", error.code).inc()
