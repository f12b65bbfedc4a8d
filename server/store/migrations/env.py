"""Alembic environment: migrations run on the connection the store hands over (never from a URL here)."""

from __future__ import annotations

from alembic import context

from probewatch.server.store.tables import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "probewatch migrations run through the store (probewatch incidents migrate --db PATH_OR_URL), not `alembic`"
    )
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
