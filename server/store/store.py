"""The incident store: one class over SQLite (embedded default) and PostgreSQL (a fleet), composed
of one part per client.

- `core.StoreCore`: location, engine, `open` (create, migrate, prove a write), transactions, secrets
- `writer.IncidentWriter`: the sidecar (`record_alert`, `record`, `complete`, `mark_interrupted`)
  and retention (`delete`, `purge_older_than`)
- `queries.IncidentQueries`: reads (`get`, `find`, `count`, `queue`, `facets`, `labelled`, `review_stats`)
- `review.ReviewActions`: the review workflow (`claim` ... `assign` ... `set_status`, `events`); it builds
  on the queries because every action returns the incident as it now is
- `generations.GenerationQueries`: the queue by flagged generation, "save & next", the filtered export

Why mixins over a store holding `writer` / `review` / `queries` objects: every client shares one
engine, one text policy and one read-only flag, and opens the store the same way; the sidecar, the
review app, the CLI, the benchmarks and the tests all call `IncidentStore.open(...)` and then its
methods, so composing by inheritance splits the code by client without touching those ~40 call
sites or adding a delegating method per operation. Each part is still readable (and type-checked)
on its own against `StoreCore`, which is all it may assume.
"""

from __future__ import annotations

from probewatch.server.store.generations import GenerationQueries
from probewatch.server.store.queries import IncidentQueries, ReviewStats
from probewatch.server.store.review import ReviewActions
from probewatch.server.store.review_bulk import BulkReviewActions
from probewatch.server.store.writer import IncidentWriter

__all__ = ["GenerationQueries", "IncidentQueries", "IncidentStore", "IncidentWriter", "ReviewActions", "ReviewStats"]


class IncidentStore(IncidentWriter, BulkReviewActions, GenerationQueries):
    """Open with `IncidentStore.open(path_or_url)`; every public method is one transaction."""
