"""The readers' client: one incident with its generation's context, filtered lists, counts, the
review queue and its filter menus, the labelled incidents that feed training and export, and the
review metrics.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from probewatch.server.store.core import StoreCore
from probewatch.server.store.queue import MAX_PER_PAGE as _MAX_PER_PAGE
from probewatch.server.store.queue import QueueFilter, QueuePage, QueueRow, check_sort, page_query
from probewatch.server.store.records import STATUSES, Incident, IncidentNotFoundError
from probewatch.server.store.tables import generations as g
from probewatch.server.store.tables import incidents as t

_GENERATION_COLUMNS = (
    g.c.prompt_length,
    g.c.tokens,
    g.c.probe_scores,
    g.c.token_texts,
    g.c.text_policy,
    g.c.updated_at.label("generation_updated_at"),
)


@dataclass
class ReviewStats:
    """What the review metrics export (server/review/metrics.py)."""

    counts: dict[str, int] = field(default_factory=dict)  # incidents per review status
    oldest_age_s: dict[str, float] = field(default_factory=dict)  # per unresolved status
    labels: dict[tuple[str, str], int] = field(default_factory=dict)  # (probe, label) -> incidents

    def precision(self) -> dict[str, float]:
        """Reviewed precision per probe: true / (true + false positives), probes with a verdict only."""
        out = {}
        for probe in sorted({p for p, _ in self.labels}):
            tp = self.labels.get((probe, "true_positive"), 0)
            fp = self.labels.get((probe, "false_positive"), 0)
            if tp + fp:
                out[probe] = tp / (tp + fp)
        return out


class IncidentQueries(StoreCore):
    """Reads; mixed into `IncidentStore` (the review actions return the incident through `get`)."""

    def get(self, incident_id: int) -> Incident:
        """One incident with its generation's context (token ids, every probe's result)."""
        stmt = (
            select(t, *_GENERATION_COLUMNS)
            .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
            .where(t.c.id == int(incident_id))
        )
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.location.display}")
        return _incident(row)

    def find(
        self,
        probe: str | None = None,
        status: str | None = None,
        generation_id: str | None = None,
        limit: int = 100,
        generation_status: str | None = None,
        label: str | None = None,
        priority: str | None = None,
    ) -> list[Incident]:
        """Newest first, without the generation context (`get` has it)."""
        clauses = [
            column == value
            for column, value in (
                (t.c.probe, probe),
                (t.c.status, status),
                (t.c.generation_id, generation_id),
                (t.c.generation_status, generation_status),
                (t.c.label, label),
                (t.c.priority, priority),
            )
            if value is not None
        ]
        stmt = select(t).where(*clauses).order_by(t.c.id.desc()).limit(int(limit))
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(stmt).mappings()]

    def count(self, status: str | None = None, probe: str | None = None) -> int:
        clauses = [c == v for c, v in ((t.c.status, status), (t.c.probe, probe)) if v is not None]
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(*clauses)).scalar_one())

    def queue(
        self, flt: QueueFilter | None = None, page: int = 1, per_page: int = 50, sort: str | None = None
    ) -> QueuePage:
        """One page of the per-incident queue (`sort`: queue.SORTS, newest first by default), the match
        count and per-status counts."""
        flt = (flt or QueueFilter()).validate()
        page = max(1, int(page))
        per_page = min(max(1, int(per_page)), _MAX_PER_PAGE)
        rows_q, total_q, counts_q = page_query(flt, page, per_page, check_sort(sort))
        with self._read() as conn:
            rows = [QueueRow(**dict(r)) for r in conn.execute(rows_q).mappings()]
            total = int(conn.execute(total_q).scalar_one())
            counts = dict.fromkeys(STATUSES, 0)
            counts.update({str(s): int(n) for s, n in conn.execute(counts_q)})
        return QueuePage(rows, total, page, per_page, counts)

    def facets(self) -> dict[str, list[str]]:
        """Distinct values for the queue's filter menus."""
        with self._read() as conn:

            def distinct(column) -> list[str]:
                stmt = select(column).where(column.is_not(None)).distinct().order_by(column)
                return [str(v) for v in conn.execute(stmt).scalars()]

            reviewers = sorted(set(distinct(t.c.assignee)) | set(distinct(t.c.labelled_by)))
            return {
                "probe": distinct(t.c.probe),
                "behaviour": distinct(t.c.behaviour),
                "model": distinct(t.c.model_fingerprint),
                "reviewer": reviewers,
            }

    def labelled(
        self, labels: Sequence[str] = ("true_positive", "false_positive"), probe: str | None = None
    ) -> list[Incident]:
        """Every incident with one of `labels` (oldest first), with its generation's context."""
        stmt = (
            select(t, *_GENERATION_COLUMNS)
            .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
            .where(t.c.label.in_(list(labels)))
            .order_by(t.c.id)
        )
        if probe is not None:
            stmt = stmt.where(t.c.probe == probe)
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(stmt).mappings()]

    def review_stats(self, now: _dt.datetime | None = None) -> ReviewStats:
        """Backlog per status, age of the oldest unresolved incident per status, verdicts per probe."""
        now = now or _dt.datetime.now(_dt.timezone.utc)
        stats = ReviewStats(counts=dict.fromkeys(STATUSES, 0))
        with self._read() as conn:
            for status, n, oldest in conn.execute(
                select(t.c.status, func.count(), func.min(t.c.created_at)).group_by(t.c.status)
            ):
                stats.counts[str(status)] = int(n)
                if status != "resolved" and oldest:
                    created = _dt.datetime.fromisoformat(str(oldest))
                    stats.oldest_age_s[str(status)] = max(0.0, (now - created).total_seconds())
            for probe, label, n in conn.execute(
                select(t.c.probe, t.c.label, func.count()).where(t.c.label.is_not(None)).group_by(t.c.probe, t.c.label)
            ):
                stats.labels[(str(probe), str(label))] = int(n)
        return stats


def _incident(row: Any) -> Incident:
    """An Incident from a result row mapping (the incidents columns, optionally the generation's)."""
    data = dict(row)
    meta = data.pop("meta", None) or data.pop("metadata", None)
    data.pop("writer", None)
    tokens = data.pop("tokens", None)
    probe_scores = data.pop("probe_scores", None)
    token_texts = data.pop("token_texts", None)
    return Incident(
        **{
            k: v
            for k, v in data.items()
            if k not in ("token_scores", "early", "prompt_length", "generation_updated_at")
        },
        generation_updated_at=data.get("generation_updated_at"),
        token_scores=json.loads(data.get("token_scores") or "[]"),
        early=bool(data.get("early")),
        metadata=json.loads(meta or "{}"),
        prompt_length=data.get("prompt_length"),
        tokens=json.loads(tokens or "[]"),
        context=json.loads(probe_scores or "{}"),
        token_texts=json.loads(token_texts or "[]"),
    )
