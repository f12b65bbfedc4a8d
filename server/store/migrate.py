"""Schema migrations (Alembic), run when a writer opens the store.

Many sidecars may start at once against one PostgreSQL: the upgrade runs in one transaction that
first takes a PostgreSQL advisory lock, so exactly one applies each revision and the others find
the schema current (PostgreSQL DDL is transactional). On SQLite the upgrade runs inside a
`BEGIN IMMEDIATE` transaction, which serialises writers the same way.

A SQLite store written before the migrations existed (an `incidents` table, no
`alembic_version`) is stamped with the first revision, which is exactly that schema, and then
upgraded. Readers never migrate: a store behind this version's head is refused with the command
that upgrades it, and a store ahead of it (written by a newer probewatch) is refused by both.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, text

from probewatch.server.store.connect import WRITE
from probewatch.server.store.records import IncidentStoreError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
LEGACY_REVISION = "0001"
_ADVISORY_LOCK = 0x70726F6265  # "probe": one key for every probewatch schema upgrade


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def current_revision(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _known(revision: str) -> bool:
    scripts = ScriptDirectory.from_config(alembic_config())
    try:
        return scripts.get_revision(revision) is not None
    except Exception:  # noqa: BLE001 - alembic raises several types for an unknown id
        return False


def upgrade(engine: Engine, where: str) -> str:
    """Bring the store's schema to head; returns the revision before the upgrade ('' when new)."""
    with engine.connect().execution_options(**WRITE) as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _ADVISORY_LOCK})
        tables = set(inspect(conn).get_table_names())
        before = current_revision(conn)
        if before is None and "incidents" in tables:
            command.stamp(alembic_config(conn), LEGACY_REVISION)
            before = LEGACY_REVISION
        if before is not None and not _known(before):
            raise IncidentStoreError(
                f"the incident store at {where} has schema revision {before}, unknown to this probewatch "
                f"(newest known: {head_revision()}): it was written by a newer version; upgrade probewatch"
            )
        command.upgrade(alembic_config(conn), "head")
    return before or ""


def check_current(engine: Engine, where: str) -> None:
    """For readers: the store must be exactly at this version's head."""
    with engine.connect() as conn:
        revision = current_revision(conn)
        tables = set(inspect(conn).get_table_names())
    head = head_revision()
    if revision == head:
        return
    if revision is None and "incidents" not in tables:
        raise IncidentStoreError(f"no incident store at {where} (the sidecar creates it on startup)")
    if revision is not None and not _known(revision):
        raise IncidentStoreError(
            f"the incident store at {where} has schema revision {revision}, unknown to this probewatch "
            f"(newest known: {head}): it was written by a newer version; upgrade probewatch"
        )
    raise IncidentStoreError(
        f"the incident store at {where} has an older schema ({revision or 'pre-migrations'}; this probewatch needs {head}): "
        f"upgrade it with `probewatch incidents migrate --db ...` (a sidecar of this version also does on start)"
    )
