"""Alembic environment: migrations run on the connection weightport hands in.

That connection is already inside a transaction (``BEGIN IMMEDIATE`` on SQLite), and the
caller holds the start-up lock, so concurrent starts migrate one after another.
"""

from __future__ import annotations

from alembic import context

from weightport.catalog.schema import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
