"""Named leases in the catalog: at most one holder at a time among every process that
shares it, until the holder releases the lease or lets it expire (a crashed holder's lease
is taken over once it has expired).

One statement decides, on SQLite and PostgreSQL alike: ``INSERT … ON CONFLICT DO UPDATE …
WHERE the lease has expired or is ours RETURNING …`` returns a row exactly when the caller may
hold it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from weightport.catalog.db import upsert
from weightport.catalog.schema import Lease


def acquire(session: Session, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
    """Take (or renew) lease ``name`` for ``holder`` until ``now + ttl_s``; False if another
    holder's lease has not expired."""
    expires = now + timedelta(seconds=ttl_s)
    statement = upsert(session, Lease).values(name=name, holder=holder, expires_at=expires)
    # RETURNING, not rowcount: psycopg's rowcount for an upsert that changed nothing is not 0.
    taken = session.execute(
        statement.on_conflict_do_update(
            index_elements=[Lease.name],
            set_={"holder": holder, "expires_at": expires},
            where=or_(Lease.expires_at <= now, Lease.holder == holder),
        ).returning(Lease.name)
    ).first()
    return taken is not None


def release(session: Session, name: str, holder: str) -> None:
    """Give lease ``name`` up, if ``holder`` holds it."""
    session.execute(delete(Lease).where(Lease.name == name, Lease.holder == holder))


def holder_of(session: Session, name: str, now: datetime) -> str | None:
    """Who holds lease ``name`` now, if anyone."""
    lease = session.scalar(select(Lease).where(Lease.name == name, Lease.expires_at > now))
    return None if lease is None else lease.holder
