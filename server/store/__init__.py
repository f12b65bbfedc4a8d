"""The incident store: SQLAlchemy Core tables, Alembic migrations, one store class for SQLite and PostgreSQL.

`probewatch.server.incidents` is the public facade (what the engine, the sidecar and the CLI
import); this package holds the pieces: `records` (the Incident dataclass, statuses, errors),
`location` (paths and database URLs), `tables` (the schema), `connect` (engines with the right
per-backend settings), `migrate` (Alembic, run at open), `store` (the store class), `queue`
(the review queue's filters and paging), `export` (reviewed incidents as dialogue JSONL).
"""

import logging

# Alembic logs one INFO line per plugin and revision at import and upgrade: noise in a sidecar's log
logging.getLogger("alembic").setLevel(logging.WARNING)
