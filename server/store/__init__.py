"""The incident store: one row per generation and probe whose aggregate crossed its threshold, kept
for human review (open -> acknowledged -> resolved, with a verdict and an audit trail).

SQLAlchemy Core + Alembic: SQLite is the embedded default (one sidecar with a volume: no server to
run, durable on commit with WAL, readable by `probewatch incidents` and `probewatch review` while
the sidecar writes); a PostgreSQL URL in `PROBEWATCH_INCIDENT_DB` / `--incident-db` gives a fleet
of sidecars one store (writes are idempotent upserts per generation + probe). `IncidentStore.open`
creates and migrates the store and proves it takes a write at startup, so a bad location is a CLI
error instead of alerts silently lost later.

The names below are the store's public face (the sidecar, the review app and the CLI import them
from here). The modules: `records` (the Incident dataclass, statuses, errors), `location` (paths
and database URLs), `privacy` (what text is kept; its rules in `privacy_rules`, the private metadata keys in
`metadata_keys`, the pseudonym key file in `pseudonym_keys`), `tables` (the schema), `connect` (engines with
the right per-backend settings), `migrate` (Alembic, run at open), `store` (the store class,
composed of one part per client: `core` (open, transactions, secrets), `writer` (the sidecar and
retention), `review` (the review workflow), `queries` (reads)), `queue` (the review queue's
filters and paging), `export` (reviewed incidents as dialogue JSONL).
"""

import logging

# Alembic logs one INFO line per plugin and revision at import and upgrade: noise in a sidecar's log
logging.getLogger("alembic").setLevel(logging.WARNING)

from probewatch.server.store.location import StoreLocation, parse_location
from probewatch.server.store.privacy import TextPolicy
from probewatch.server.store.queue import QueueFilter, QueuePage, QueueRow
from probewatch.server.store.records import (
    ACTIONS,
    GENERATION_STATUSES,
    LABELS,
    PRIORITIES,
    SEVERITIES,
    STATUSES,
    Incident,
    IncidentNotFoundError,
    IncidentStoreError,
    ReviewConflictError,
    ReviewError,
    ReviewEvent,
    probe_context,
)
from probewatch.server.store.store import IncidentStore, ReviewStats

__all__ = [
    "ACTIONS",
    "GENERATION_STATUSES",
    "LABELS",
    "PRIORITIES",
    "SEVERITIES",
    "STATUSES",
    "Incident",
    "IncidentNotFoundError",
    "IncidentStore",
    "IncidentStoreError",
    "QueueFilter",
    "QueuePage",
    "QueueRow",
    "ReviewConflictError",
    "ReviewError",
    "ReviewEvent",
    "ReviewStats",
    "StoreLocation",
    "TextPolicy",
    "parse_location",
    "probe_context",
]
