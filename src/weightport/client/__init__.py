"""weightport's downloader: parallel ranged requests, resume, verification, safe extraction.

It speaks HTTP only (no import of the server side), so it also works against the public
Fireworks and Together APIs::

    from weightport.client import FireworksModel, HttpSession, download, resolve_api

    api = resolve_api("fireworks")                      # flags > WEIGHTPORT_* > FIREWORKS_*
    source = FireworksModel(HttpSession(), api, "acct", "my-model")
    result = download(source, Path("my-model"))         # -> DownloadResult
"""

from weightport.client.engine import DownloadResult, Source, download
from weightport.client.errors import (
    ApiError,
    AuthenticationFailed,
    BadRequest,
    ConfigurationError,
    ConnectionFailed,
    DownloadError,
    InsufficientSpace,
    IntegrityError,
    NotFound,
    PermissionDenied,
    RangeNotSatisfiable,
    RateLimited,
    RemoteChanged,
    ServerError,
    SignedUrlRejected,
    TransferError,
    UnsafeArchive,
    UnsafePath,
)
from weightport.client.extract import ExtractResult, extract_tar_zst
from weightport.client.http import HttpSession
from weightport.client.options import DownloadOptions, Tuning
from weightport.client.progress import FileProgress, ProgressSink, ProgressSnapshot
from weightport.client.remote import RemoteFile
from weightport.client.sources import (
    ApiConfig,
    FineTuneRef,
    FireworksModel,
    TogetherCheckpoint,
    parse_model_name,
    resolve_api,
)
from weightport.client.transfer import FileResult

__all__ = [
    "ApiConfig",
    "ApiError",
    "AuthenticationFailed",
    "BadRequest",
    "ConfigurationError",
    "ConnectionFailed",
    "DownloadError",
    "DownloadOptions",
    "DownloadResult",
    "ExtractResult",
    "FileProgress",
    "FileResult",
    "FineTuneRef",
    "FireworksModel",
    "HttpSession",
    "InsufficientSpace",
    "IntegrityError",
    "NotFound",
    "PermissionDenied",
    "ProgressSink",
    "ProgressSnapshot",
    "RangeNotSatisfiable",
    "RateLimited",
    "RemoteChanged",
    "RemoteFile",
    "ServerError",
    "SignedUrlRejected",
    "Source",
    "TogetherCheckpoint",
    "TransferError",
    "Tuning",
    "UnsafeArchive",
    "UnsafePath",
    "download",
    "extract_tar_zst",
    "parse_model_name",
    "resolve_api",
]
