"""Accounts and API keys. Keys are ``wp_<id>_<secret>``; only sha256(key) is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from weightport.catalog.schema import Account, ApiKey, utcnow
from weightport.errors import (
    AlreadyExists,
    InvalidArgument,
    InvalidCredentials,
    NotFound,
    Unauthenticated,
)

ACCOUNT_ID = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
KEY_PREFIX = "wp_"
#: The account created on first start; it alone manages keys in the web console.
ADMIN_ACCOUNT = "admin"
MAX_KEY_NAME = 255  # its column's width


@dataclass(frozen=True)
class IssuedKey:
    """A freshly created key: the only moment the secret exists outside the caller's hands."""

    id: str
    account_id: str
    secret: str


@dataclass(frozen=True)
class Caller:
    """Who a request's API key says it is: the account, and which of its keys was used."""

    account_id: str
    key_id: str


@dataclass(frozen=True)
class KeyInfo:
    id: str
    account_id: str
    name: str
    created_at: datetime
    revoked: bool


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def validate_account_id(account_id: str) -> str:
    if not ACCOUNT_ID.match(account_id):
        raise InvalidArgument(
            f"invalid account id {account_id!r}: use 1-63 lowercase letters, digits and "
            "hyphens, starting and ending with a letter or digit"
        )
    return account_id


def create_account(session: Session, account_id: str, display_name: str = "") -> Account:
    validate_account_id(account_id)
    if session.get(Account, account_id) is not None:
        raise AlreadyExists(f'account "{account_id}" already exists')
    account = Account(id=account_id, display_name=display_name or account_id)
    session.add(account)
    session.flush()
    return account


def ensure_account(session: Session, account_id: str) -> Account:
    account = session.get(Account, validate_account_id(account_id))
    return account or create_account(session, account_id)


def create_key(session: Session, account_id: str, name: str = "") -> IssuedKey:
    if len(name) > MAX_KEY_NAME or "\x00" in name:
        raise InvalidArgument(f"a key name has at most {MAX_KEY_NAME} characters and no NUL")
    if session.get(Account, account_id) is None:
        raise NotFound(f'account "{account_id}" not found')
    key_id = secrets.token_hex(6)
    secret = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(id=key_id, account_id=account_id, secret_sha256=_digest(secret), name=name))
    session.flush()
    return IssuedKey(id=key_id, account_id=account_id, secret=secret)


#: What a key lookup reads, in this order (:func:`caller_from` takes such a row).
KEY_COLUMNS = (ApiKey.id, ApiKey.account_id, ApiKey.revoked_at)
# Built once: every authenticated call runs it, and building costs more than running it.
_KEY_BY_DIGEST = select(*KEY_COLUMNS).where(ApiKey.secret_sha256 == bindparam("digest"))
_KEY_REVOKED_AT = select(ApiKey.revoked_at).where(ApiKey.id == bindparam("id"))


def presented_digest(secret: str) -> str:
    """What the catalog looks a presented key up by (its sha256, so timing reveals nothing
    about stored keys); :class:`Unauthenticated` for a key that cannot be one."""
    if not secret:
        raise Unauthenticated("missing API key: send Authorization: Bearer <key>")
    if not secret.isascii():
        # Keys are ASCII; other bytes in the header cannot match one (and cannot be hashed
        # as text when they arrive undecodable).
        raise InvalidCredentials("the API key you provided is invalid or revoked")
    return _digest(secret)


def caller_from(key: Sequence[Any] | None) -> Caller:
    """The caller of a looked-up key (a row of :data:`KEY_COLUMNS`, ``None`` if none
    matched); :class:`InvalidCredentials` if there is none or it is revoked."""
    if key is None or key[2] is not None:
        raise InvalidCredentials("the API key you provided is invalid or revoked")
    return Caller(account_id=key[1], key_id=key[0])


def authenticate(session: Session, secret: str) -> Caller:
    """The account and key id a presented key belongs to; :class:`Unauthenticated` otherwise."""
    digest = presented_digest(secret)
    return caller_from(session.connection().execute(_KEY_BY_DIGEST, {"digest": digest}).first())


def key_is_active(session: Session, key_id: str) -> bool:
    """Whether the key exists and is not revoked (a deleted account's keys are gone)."""
    revoked_at = session.connection().execute(_KEY_REVOKED_AT, {"id": key_id}).one_or_none()
    return revoked_at is not None and revoked_at[0] is None


def list_keys(session: Session, account_id: str | None = None) -> list[KeyInfo]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if account_id is not None:
        query = query.where(ApiKey.account_id == account_id)
    return [
        KeyInfo(k.id, k.account_id, k.name, k.created_at, k.revoked_at is not None)
        for k in session.scalars(query)
    ]


def key_id_of(session: Session, key_or_id: str) -> str:
    """The id of a key given either as the key itself (``wp_<id>_<secret>``) or as its id.

    A whole key is looked up by its digest, so an id with a made-up secret matches nothing;
    the secret never appears in the error.
    """
    if not key_or_id.startswith(KEY_PREFIX):
        return key_or_id
    key_id = session.scalar(select(ApiKey.id).where(ApiKey.secret_sha256 == _digest(key_or_id)))
    if key_id is None:
        raise NotFound("no such API key (pass the whole key, or its id from `keys list`)")
    return key_id


def revoke_key(session: Session, key_id: str) -> None:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f'API key "{key_id}" not found')
    if key.revoked_at is None:
        key.revoked_at = utcnow()
