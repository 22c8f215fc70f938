"""Web console sessions: an API key exchanged for an expiring, revocable browser session.

The browser holds only a random token (``secrets.token_urlsafe(32)``); the catalog holds its
sha256, the key it was opened with and its expiry. A session is valid while it is unexpired,
not ended, and its key is not revoked — all checked in the one query of :func:`resolve`, so
revoking a key ends its sessions at once and every replica agrees.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from weightport.catalog import accounts
from weightport.catalog.schema import ApiKey, ConsoleSession, utcnow


@dataclass(frozen=True)
class SignedIn:
    """Who a console session speaks for."""

    account_id: str
    key_id: str
    expires_at: datetime


@dataclass(frozen=True)
class StartedSession:
    """A new session: ``token`` goes into the cookie and exists nowhere else."""

    token: str
    who: SignedIn


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(session: Session, api_key: str, ttl_s: int) -> StartedSession:
    """Open a session for a live API key (:class:`Unauthenticated` otherwise).

    Expired sessions are swept here, so the table holds only what could still be used.
    """
    caller = accounts.authenticate(session, api_key)
    now = utcnow()
    session.execute(delete(ConsoleSession).where(ConsoleSession.expires_at <= now))
    token = secrets.token_urlsafe(32)
    expires_at = now + timedelta(seconds=ttl_s)
    session.add(
        ConsoleSession(
            token_sha256=_digest(token), key_id=caller.key_id, created_at=now, expires_at=expires_at
        )
    )
    session.flush()
    return StartedSession(token, SignedIn(caller.account_id, caller.key_id, expires_at))


def resolve(session: Session, token: str) -> SignedIn | None:
    """The identity behind a session token, or None if it is unknown, expired, ended or its
    key was revoked."""
    if not token:
        return None
    row = session.execute(
        select(ApiKey.account_id, ApiKey.id, ApiKey.revoked_at, ConsoleSession.expires_at)
        .join(ConsoleSession, ConsoleSession.key_id == ApiKey.id)
        .where(ConsoleSession.token_sha256 == _digest(token))
    ).one_or_none()
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    return SignedIn(row.account_id, row.id, row.expires_at)


def end(session: Session, token: str) -> None:
    """End a session (sign-out); unknown tokens are ignored."""
    session.execute(delete(ConsoleSession).where(ConsoleSession.token_sha256 == _digest(token)))
