"""HMAC-SHA256 signed URLs, for stores that cannot presign their own (the local store).

A signed URL carries its proof in query parameters named after GCS V4 signed URLs, so
clients that sniff them (``X-Goog-Expires`` for the lifetime, ``X-Goog-SignedHeaders`` for
which headers to send) behave as they do against Google Cloud Storage:

=========================  ===================================================
``X-Goog-Algorithm``       ``WP1-HMAC-SHA256``
``X-Goog-Credential``      the key id (``kid``) that signed; rotation keeps old kids listed
``X-Goog-Date``            signing time, ``YYYYMMDDTHHMMSSZ`` (UTC)
``X-Goog-Expires``         lifetime in seconds from ``X-Goog-Date`` (at most 7 days)
``X-Goog-SignedHeaders``   ``host`` unless told otherwise (advertised for clients only:
                           the host is not bound, so replicas behind any name verify)
``X-Wp-<Name>``            bound parameters, e.g. the declared upload size
``X-Goog-Signature``       lowercase hex HMAC-SHA256 over the canonical string
=========================  ===================================================

The canonical string length-prefixes every field (``<len>:<bytes>``), so no choice of path
or value can make two different requests sign the same bytes. The path is signed exactly
as given: weightport passes the decoded path (no query string), which is unambiguous
because file paths are validated (no control characters, no empty segments).

A signature for ``GET`` also admits ``HEAD``; no other method crosses. Every failure raises
:class:`~weightport.errors.SignatureInvalid`; an authentic URL past its expiry raises the
subclass :class:`~weightport.errors.SignatureExpired`.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote_plus

from weightport.config import Settings
from weightport.errors import InvalidArgument, SignatureExpired, SignatureInvalid

ALGORITHM = "WP1-HMAC-SHA256"
#: Longest lifetime a URL may have, seconds (GCS V4 allows the same).
MAX_EXPIRES = 7 * 24 * 3600
#: Shortest secret accepted from configuration, bytes.
MIN_SECRET_BYTES = 16

Q_ALGORITHM = "X-Goog-Algorithm"
Q_CREDENTIAL = "X-Goog-Credential"
Q_DATE = "X-Goog-Date"
Q_EXPIRES = "X-Goog-Expires"
Q_SIGNED_HEADERS = "X-Goog-SignedHeaders"
Q_SIGNATURE = "X-Goog-Signature"
BOUND_PREFIX = "X-Wp-"

_REQUIRED = (Q_ALGORITHM, Q_CREDENTIAL, Q_DATE, Q_EXPIRES, Q_SIGNED_HEADERS, Q_SIGNATURE)
_KNOWN_LOWER = {name.lower(): name for name in _REQUIRED}
_GOOG_PREFIX_LOWER = "x-goog-"
_BOUND_PREFIX_LOWER = BOUND_PREFIX.lower()

_KID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_METHOD_RE = re.compile(r"[A-Z]{1,16}")
_BOUND_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}")
_HEADER_LIST_RE = re.compile(r"[a-z0-9-]+(?:;[a-z0-9-]+)*")
_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_EXPIRES_RE = re.compile(r"[1-9][0-9]{0,9}")
_SIGNATURE_RE = re.compile(r"[0-9a-f]{64}")
#: What urlencode leaves as it is (quote_plus with safe="").
_URL_SAFE_RE = re.compile(r"[A-Za-z0-9._~-]*")
#: Signature templates kept per signer (a handful are live in any one second).
_TEMPLATE_CACHE = 64


@dataclass(frozen=True)
class SigningKey:
    """One HMAC key: ``kid`` names it in URLs (so keys can rotate), ``secret`` signs."""

    kid: str
    secret: bytes

    def __post_init__(self) -> None:
        if not _KID_RE.fullmatch(self.kid):
            raise InvalidArgument(
                f"signing key id {self.kid!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise InvalidArgument(
                f"signing key {self.kid!r}: secret must be at least {MIN_SECRET_BYTES} bytes"
            )

    def __repr__(self) -> str:
        # Keep secrets out of logs and tracebacks.
        return f"SigningKey(kid={self.kid!r}, secret=<{len(self.secret)} bytes>)"


def parse_signing_keys(spec: str) -> list[SigningKey]:
    """Parse ``"kid:secret,kid2:secret2"`` (the ``signing_keys`` setting).

    The first key signs new URLs; every listed key verifies. Secrets are taken as UTF-8 text
    and may contain ``:`` but not ``,``. Raises :class:`InvalidArgument` on an empty spec,
    a malformed entry, a short secret or a repeated key id.
    """
    keys: list[SigningKey] = []
    for entry in spec.split(","):
        entry = entry.strip()
        kid, sep, secret = entry.partition(":")
        if not entry or not sep:
            raise InvalidArgument(f"signing keys: expected 'kid:secret', got {entry!r}")
        keys.append(SigningKey(kid.strip(), secret.strip().encode()))
    kids = [k.kid for k in keys]
    if len(set(kids)) != len(kids):
        raise InvalidArgument("signing keys: a key id is listed twice")
    return keys


def load_or_create_keyfile(path: Path) -> list[SigningKey]:
    """Load the signing keys kept in ``path``, creating it with one fresh key if absent.

    The file holds the same ``kid:secret[,kid:secret]`` text as the setting and is created
    with mode 0600. Creation is atomic (written aside, then hard-linked into place), so
    servers starting together all end up with the same key.
    """
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        text = new_signing_key() + "\n"
        aside = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            # If another process won the race, its key stands and ours is dropped.
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        finally:
            aside.unlink(missing_ok=True)
    text = path.read_text(encoding="utf-8").strip()
    try:
        return parse_signing_keys(text)
    except InvalidArgument as exc:
        raise InvalidArgument(f"signing key file {path}: {exc}") from exc


def keys_from_settings(settings: Settings) -> list[SigningKey]:
    """The signing keys a server uses: ``signing_keys`` when set, else the key file in the data
    directory (created on first use).

    The key file is safe only where every process shares that directory: one server, or the
    workers of one ``serve --workers``. A PostgreSQL catalog means replicas on several
    machines, where each would sign with a key of its own and reject the others' URLs, so
    there ``signing_keys`` is required (:class:`InvalidArgument` naming it otherwise).
    """
    if settings.signing_keys:
        return parse_signing_keys(settings.signing_keys)
    if not settings.effective_database_url.startswith("sqlite"):
        raise InvalidArgument(
            "signing_keys must be set when the catalog is shared (database_url is not SQLite): "
            "give every replica the same WEIGHTPORT_SIGNING_KEYS=kid:secret "
            "(make one with `weightport keys signing-key`)"
        )
    return load_or_create_keyfile(settings.data_dir / "signing-keys")


def new_signing_key() -> str:
    """A fresh ``kid:secret`` entry for ``signing_keys`` (32 random bytes, dated key id)."""
    kid = "k" + time.strftime("%Y%m%d", time.gmtime()) + "-" + secrets.token_hex(3)
    return f"{kid}:{secrets.token_urlsafe(32)}"


def _format_date(epoch: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def _parse_date(text: str) -> int:
    match = _DATE_RE.fullmatch(text)
    if match is None:
        raise SignatureInvalid(f"signed URL: malformed {Q_DATE}")
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:  # month 13, February 30, year 0
        raise SignatureInvalid(f"signed URL: malformed {Q_DATE}") from None
    return int(moment.timestamp())


def _field(part: str) -> bytes:
    """One length-prefixed field of the canonical string: ``<len>:<bytes>``."""
    raw = part.encode("utf-8", "surrogatepass")
    return b"%d:%b" % (len(raw), raw)


def _canonical(
    method: str,
    path: str,
    date: str,
    expires: str,
    kid: str,
    signed_headers: str,
    bound: Iterable[tuple[str, str]],
) -> bytes:
    parts = [ALGORITHM, method, path, date, expires, kid, signed_headers]
    for name, value in bound:
        parts.append(name)
        parts.append(value)
    return b"".join(_field(part) for part in parts)


class SignatureTemplate:
    """What every URL signed in one second with one key, method, lifetime, header list and set
    of bound names shares, checked and encoded once (get one from :meth:`UrlSigner.template`).

    A listing of 200 files signs 200 URLs that differ only in path and bound values; building
    each canonical string and query from scratch cost several times the HMAC itself.
    """

    __slots__ = (
        "_bound_keys",
        "_bound_names",
        "_head",
        "_inner",
        "_middle",
        "_names",
        "_outer",
        "_query_head",
        "_secret",
        "query",
    )

    def __init__(
        self,
        key: SigningKey,
        method: str,
        date: str,
        expires: str,
        headers: str,
        names: Sequence[str],
    ) -> None:
        self._secret = key.secret
        self._head = _field(ALGORITHM) + _field(method)
        self._middle = _field(date) + _field(expires) + _field(key.kid) + _field(headers)
        self._names = [_field(name) for name in names]
        self._bound_names = list(names)
        # HMAC-SHA256 (RFC 2104) as its two keyed hashes, the inner one already fed the fields
        # every URL starts with; each URL hashes on copies. hmac.HMAC.copy() does the same
        # through three Python calls per URL, which cost more than the hashing.
        block = _pad_key(self._secret)
        self._inner = hashlib.sha256(block.translate(_IPAD) + self._head)
        self._outer = hashlib.sha256(block.translate(_OPAD))
        self._bound_keys = [BOUND_PREFIX + name for name in names]
        #: The query parameters every URL of this template carries.
        self.query = {
            Q_ALGORITHM: ALGORITHM,
            Q_CREDENTIAL: key.kid,
            Q_DATE: date,
            Q_EXPIRES: expires,
            Q_SIGNED_HEADERS: headers,
        }
        self._query_head = _query_string(self.query)

    def signature(self, path: str, values: Sequence[str]) -> str:
        """The hex signature of ``path`` with the bound ``values`` (in the names' order);
        the same bytes :func:`_canonical` builds."""
        parts = [self._head, _field(path), self._middle]
        for name, value in zip(self._names, values, strict=True):
            parts.append(name)
            parts.append(_field(value))
        return hmac.digest(self._secret, b"".join(parts), "sha256").hex()

    def params(self, path: str, values: Sequence[str]) -> dict[str, str]:
        """The query parameters that make ``path`` valid, bound to ``values``."""
        params = dict(self.query)
        for key, value in zip(self._bound_keys, values, strict=True):
            params[key] = value
        params[Q_SIGNATURE] = self.signature(path, values)
        return params

    def query_string(self, path: str, values: Sequence[str]) -> str:
        """:meth:`params` encoded as a URL query string, byte for byte what
        :func:`urllib.parse.urlencode` makes of them, without building the mapping."""
        each = {name: [value] for name, value in zip(self._bound_names, values, strict=True)}
        return self.query_strings([path], each=each)[0]

    def query_strings(
        self,
        paths: Sequence[str],
        *,
        shared: Mapping[str, str] | None = None,
        each: Mapping[str, Sequence[str]] | None = None,
    ) -> list[str]:
        """:meth:`query_string` for each of ``paths``, many URLs at once (a listing of 200
        files signs 200 per request). Every bound name of the template takes its value from
        ``shared`` (one value for all the URLs, encoded once) or from ``each`` (a value per
        path, in the order of ``paths``)."""
        shared = shared or {}
        each = each or {}
        if sorted([*shared, *each]) != self._bound_names:
            raise ValueError(f"values for exactly {self._bound_names} expected")
        # The canonical string and the query alternate constant text (the fields of shared
        # values included) with the per-URL values: constants[k] comes before column k's
        # value, the tails after the last one. Bound names are letters, digits and "-".
        canonical, query = [self._middle], [self._query_head]
        constants: list[tuple[bytes, str, Sequence[str]]] = []
        for name, field, key in zip(self._bound_names, self._names, self._bound_keys, strict=True):
            column = each.get(name)
            if column is None:
                value = shared[name]
                canonical += (field, _field(value))
                query.append(f"&{key}={_escaped(value)}")
                continue
            if len(column) != len(paths):
                raise ValueError(f"{len(paths)} values of {name!r} expected, not {len(column)}")
            constants.append((b"".join([*canonical, field]), "".join([*query, f"&{key}="]), column))
            canonical, query = [], []
        canonical_tail = b"".join(canonical)
        query_tail = "".join([*query, f"&{Q_SIGNATURE}="])
        if len(constants) == 1:  # one value per URL (a listing's sha256): the hot case
            return self._sign_column(paths, *constants[0], canonical_tail, query_tail)
        inner, outer = self._inner, self._outer
        safe = _URL_SAFE_RE.fullmatch
        out: list[str] = []
        for i, path in enumerate(paths):
            raw = path.encode("utf-8", "surrogatepass")
            signed = [b"%d:%b" % (len(raw), raw)]
            text: list[str] = []
            for constant, query_constant, column in constants:
                value = column[i]
                raw = value.encode("utf-8", "surrogatepass")
                signed += (constant, b"%d:%b" % (len(raw), raw))
                text += (query_constant, value if safe(value) else quote_plus(value, safe=""))
            signed.append(canonical_tail)
            mac = inner.copy()
            mac.update(b"".join(signed))
            digest = outer.copy()
            digest.update(mac.digest())
            text += (query_tail, digest.hexdigest())
            out.append("".join(text))
        return out

    def _sign_column(
        self,
        paths: Sequence[str],
        constant: bytes,
        query_constant: str,
        column: Sequence[str],
        canonical_tail: bytes,
        query_tail: str,
    ) -> list[str]:
        """:meth:`query_strings`' loop unrolled for one per-URL value."""
        inner, outer = self._inner, self._outer
        # Checked all at once when they all need no escaping (a sha256 column does not).
        safe = _URL_SAFE_RE.fullmatch if not _URL_SAFE_RE.fullmatch("".join(column)) else None
        out: list[str] = []
        for path, value in zip(paths, column, strict=True):
            raw_path = path.encode("utf-8", "surrogatepass")
            raw = value.encode("utf-8", "surrogatepass")
            mac = inner.copy()
            mac.update(
                b"%d:%b%b%d:%b%b"
                % (len(raw_path), raw_path, constant, len(raw), raw, canonical_tail)
            )
            digest = outer.copy()
            digest.update(mac.digest())
            escaped = value if safe is None or safe(value) else quote_plus(value, safe="")
            out.append(f"{query_constant}{escaped}{query_tail}{digest.hexdigest()}")
        return out


#: RFC 2104's pads, as byte translation tables (what :mod:`hmac` uses too).
_IPAD = bytes(x ^ 0x36 for x in range(256))
_OPAD = bytes(x ^ 0x5C for x in range(256))


def _pad_key(secret: bytes) -> bytes:
    """An HMAC-SHA256 key as one 64-byte block: hashed first if longer, then zero-padded."""
    if len(secret) > 64:
        secret = hashlib.sha256(secret).digest()
    return secret.ljust(64, b"\0")


def _query_string(params: Mapping[str, str]) -> str:
    """``params`` as a URL query string: exactly :func:`urllib.parse.urlencode`'s output, with
    the common case (names and values that need no escaping) taken without escaping them."""
    return "&".join(f"{_escaped(name)}={_escaped(value)}" for name, value in params.items())


def _escaped(text: str) -> str:
    return text if _URL_SAFE_RE.fullmatch(text) else quote_plus(text, safe="")


def _check_method(method: str) -> str:
    upper = method.upper()
    if not _METHOD_RE.fullmatch(upper):
        raise InvalidArgument(f"not an HTTP method: {method!r}")
    return upper


class UrlSigner:
    """Signs and verifies URLs with a list of keys: the first signs, all verify."""

    def __init__(self, keys: Sequence[SigningKey]) -> None:
        if not keys:
            raise InvalidArgument("a UrlSigner needs at least one signing key")
        by_kid: dict[str, bytes] = {}
        for key in keys:
            if key.kid in by_kid:
                raise InvalidArgument(f"signing key id {key.kid!r} listed twice")
            by_kid[key.kid] = key.secret
        self._signing = keys[0]
        self._secrets = by_kid
        self._templates: dict[tuple[object, ...], SignatureTemplate] = {}

    def sign(
        self,
        method: str,
        path: str,
        *,
        expires_at: int,
        now: int,
        bound: Mapping[str, str] | None = None,
        signed_headers: Sequence[str] = ("host",),
    ) -> dict[str, str]:
        """The query parameters that make ``method path`` valid until ``expires_at``.

        ``path`` is the decoded URL path, without query string. ``bound``
        values travel as ``X-Wp-<Name>`` parameters and come back from :meth:`verify`.
        ``signed_headers`` is only what ``X-Goog-SignedHeaders`` advertises to clients
        (e.g. ``content-type;host;x-goog-content-length-range`` for uploads); it is signed
        so it cannot be altered, but the headers themselves are not.
        """
        items = sorted((bound or {}).items())
        template = self.template(
            method,
            expires_at=expires_at,
            now=now,
            names=tuple(name for name, _ in items),
            signed_headers=tuple(signed_headers),
        )
        return template.params(path, [value for _, value in items])

    def template(
        self,
        method: str,
        *,
        expires_at: int,
        now: int,
        names: tuple[str, ...] = (),
        signed_headers: tuple[str, ...] = ("host",),
    ) -> SignatureTemplate:
        """The template of URLs :meth:`sign` would make with bound parameters named ``names``
        (sorted), for signing many at once. Cached: a request signs many URLs in the same
        second with the same parameters."""
        lifetime = expires_at - now
        cache_key = (method, now, lifetime, signed_headers, names)
        template = self._templates.get(cache_key)
        if template is not None:
            return template
        upper = _check_method(method)
        if not 1 <= lifetime <= MAX_EXPIRES:
            raise InvalidArgument(
                f"a signed URL must live between 1 s and {MAX_EXPIRES} s, not {lifetime} s"
            )
        headers = ";".join(sorted(h.lower() for h in signed_headers))
        if not _HEADER_LIST_RE.fullmatch(headers):
            raise InvalidArgument(f"bad signed header list {list(signed_headers)!r}")
        for name in names:
            if not _BOUND_NAME_RE.fullmatch(name):
                raise InvalidArgument(f"bound parameter name {name!r}: use letters, digits, '-'")
        if len({name.lower() for name in names}) != len(names):
            raise InvalidArgument("bound parameter names differ only in case")
        if list(names) != sorted(names):
            raise InvalidArgument("bound parameter names must be given sorted")
        template = SignatureTemplate(
            self._signing, upper, _format_date(now), str(lifetime), headers, names
        )
        if len(self._templates) >= _TEMPLATE_CACHE:
            self._templates.clear()
        self._templates[cache_key] = template
        return template

    def verify(
        self,
        method: str,
        path: str,
        query: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        now: int,
    ) -> dict[str, str]:
        """Check a signed request; return its bound parameters (names without ``X-Wp-``).

        ``query`` is the request's decoded query: a mapping, a multidict (duplicates are
        seen through its ``items()``) or ``(name, value)`` pairs. Parameters outside the
        ``X-Goog-``/``X-Wp-`` families are ignored. Raises :class:`SignatureExpired` for an
        authentic URL past ``X-Goog-Date + X-Goog-Expires`` and :class:`SignatureInvalid`
        for anything else wrong (missing, repeated or malformed parameters, an unknown key,
        a signature that does not match the method, path, expiry, key or bound values).
        """
        pairs = query.items() if isinstance(query, Mapping) else query
        fields: dict[str, str] = {}
        bound: dict[str, tuple[str, str]] = {}
        for name, value in pairs:
            lower = name.lower()
            if lower.startswith(_BOUND_PREFIX_LOWER):
                short = name[len(BOUND_PREFIX) :]
                if lower in bound or not _BOUND_NAME_RE.fullmatch(short):
                    raise SignatureInvalid(f"signed URL: repeated or malformed {name!r}")
                bound[lower] = (short, value)
            elif lower.startswith(_GOOG_PREFIX_LOWER):
                canonical = _KNOWN_LOWER.get(lower)
                # An exact name only: a second spelling could shadow the signed value.
                if canonical != name or name in fields:
                    raise SignatureInvalid(f"signed URL: unexpected or repeated {name!r}")
                fields[name] = value
        missing = [n for n in _REQUIRED if n not in fields]
        if missing:
            raise SignatureInvalid(f"signed URL: missing {', '.join(missing)}")
        if fields[Q_ALGORITHM] != ALGORITHM:
            raise SignatureInvalid(f"signed URL: unsupported {Q_ALGORITHM}")
        kid = fields[Q_CREDENTIAL]
        secret = self._secrets.get(kid)
        if secret is None:
            raise SignatureInvalid("signed URL: unknown signing key (it may have been retired)")
        expires = fields[Q_EXPIRES]
        if not _EXPIRES_RE.fullmatch(expires) or int(expires) > MAX_EXPIRES:
            raise SignatureInvalid(f"signed URL: malformed {Q_EXPIRES}")
        date = fields[Q_DATE]
        signed_at = _parse_date(date)
        headers = fields[Q_SIGNED_HEADERS]
        if not _HEADER_LIST_RE.fullmatch(headers):
            raise SignatureInvalid(f"signed URL: malformed {Q_SIGNED_HEADERS}")
        signature = fields[Q_SIGNATURE]
        if not _SIGNATURE_RE.fullmatch(signature):
            raise SignatureInvalid(f"signed URL: malformed {Q_SIGNATURE}")
        items = sorted(bound.values())
        upper = method.upper()
        candidates = [upper, "GET"] if upper == "HEAD" else [upper]
        for candidate in candidates:
            message = _canonical(candidate, path, date, expires, kid, headers, items)
            expected = hmac.digest(secret, message, "sha256").hex()
            if hmac.compare_digest(expected, signature):
                break
        else:
            raise SignatureInvalid(
                "signed URL: signature does not match this request "
                "(method, path, expiry, key or bound parameters were changed)"
            )
        if now > signed_at + int(expires):
            raise SignatureExpired(
                f"signed URL expired at {_format_date(signed_at + int(expires))}; "
                "request a fresh one"
            )
        return dict(items)
