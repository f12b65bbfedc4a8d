"""Incidents as JSONL records: one incident per line with its generation's context and audit trail.

The one writer of these lines for `probewatch incidents export` (a file) and the review app's
`GET /export` (a streamed download of the filtered queue), so the two never disagree. The text is
what the store keeps (`--store-text`: redacted text stays redacted). For training data (dialogue
JSONL of reviewed incidents) see `export.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from probewatch.jsonio import to_jsonable
from probewatch.server.store.generations import GenerationQueries
from probewatch.server.store.queue import QueueFilter


def incident_lines(store: GenerationQueries, flt: QueueFilter | None = None) -> Iterator[str]:
    """The incidents `flt` selects, oldest first, one JSON object per line (each ends with a newline)."""
    for record in store.export_records(flt):
        yield json.dumps(to_jsonable(record), ensure_ascii=False) + "\n"
