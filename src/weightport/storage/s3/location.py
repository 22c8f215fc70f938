"""Where an S3 store lives and how to reach it: ``s3://BUCKET/PREFIX`` plus the endpoints.

Pure values, no I/O: parsed once from settings and handed to the store and the copier.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from weightport.errors import InvalidArgument

#: SigV4's longest presigned-URL lifetime (7 days); S3 refuses longer ones at request time.
SIGV4_MAX_EXPIRES = 7 * 24 * 3600
#: Largest object one PUT may write and one CopyObject may copy on AWS S3.
AWS_MAX_PUT = 5 << 30


@dataclass(frozen=True)
class S3Location:
    """A bucket and a key prefix inside it (``""``, or ending in ``/``)."""

    bucket: str
    prefix: str = ""

    @classmethod
    def parse(cls, url: str, *, what: str = "storage_url") -> S3Location:
        """``s3://BUCKET[/PREFIX]`` → location; :class:`InvalidArgument` naming ``what``."""
        parts = urlsplit(url.strip())
        if parts.scheme != "s3" or not parts.netloc:
            raise InvalidArgument(f"{what} {url!r}: expected s3://BUCKET/PREFIX")
        if parts.query or parts.fragment:
            raise InvalidArgument(f"{what} {url!r}: an S3 URL has no query or fragment")
        segments = [s for s in parts.path.split("/") if s]
        if any(s in (".", "..") for s in segments):
            raise InvalidArgument(f"{what} {url!r}: '.' and '..' are not allowed in the prefix")
        prefix = "/".join(segments) + "/" if segments else ""
        return cls(parts.netloc, prefix)

    def key(self, name: str) -> str:
        """The full object key of ``name`` under the prefix."""
        return self.prefix + name

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


@dataclass(frozen=True)
class S3Connection:
    """How to reach the S3 service: the endpoint weightport uses, the one clients use."""

    endpoint: str = ""
    public_endpoint: str = ""
    region: str = "us-east-1"

    @property
    def client_endpoint(self) -> str:
        """The endpoint presigned URLs are signed for (SigV4 binds the host)."""
        return self.public_endpoint or self.endpoint

    def check(self) -> S3Connection:
        for name in ("endpoint", "public_endpoint"):
            value = getattr(self, name)
            if value and urlsplit(value).scheme not in ("http", "https"):
                raise InvalidArgument(f"s3_{name} {value!r}: expected http(s)://host[:port]")
        return self


def clamp_expiry(seconds: int) -> int:
    """A presigned URL lifetime SigV4 accepts: between 1 s and 7 days."""
    return max(1, min(int(seconds), SIGV4_MAX_EXPIRES))
