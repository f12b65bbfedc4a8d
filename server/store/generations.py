"""The review queue by flagged generation: one row per generation, with its probes' incidents as badges.

One generation often alerts on several probes (refusal and its mean-difference twin, deception and
its SAE twin); reviewing it once is the unit of work. The grouping is SQL, not Python over every
row: the filters of `queue.conditions` select incidents, `GROUP BY generation_id` (served by the
unique `(generation_id, probe)` index) gives each generation's aggregates (newest incident id,
first alert time, highest score, highest margin over its threshold, how many incidents), ordered
and paged with LIMIT/OFFSET; a second query reads the page's generations' incidents (at most
`per_page` generations) for the badges. Counts are distinct generations.

`next_generation` answers "save & next": the generation after a given one in the same filtered,
sorted queue, by keyset on (sort key, newest incident id), so it is one grouped query however
deep in the queue the reviewer is.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Select, and_, func, or_, select

from probewatch.server.store.queries import _GENERATION_COLUMNS as GENERATION_COLUMNS
from probewatch.server.store.queries import IncidentQueries, _incident
from probewatch.server.store.queue import (
    MAX_PER_PAGE,
    PRIORITY_RANK,
    QUEUE_COLUMNS,
    Paged,
    QueueFilter,
    QueueRow,
    check_sort,
    conditions,
)
from probewatch.server.store.records import PRIORITIES, STATUSES, Incident
from probewatch.server.store.tables import generations as g
from probewatch.server.store.tables import incidents as t
from probewatch.server.store.tables import review_events as ev

EXPORT_BATCH = 500

_last_id = func.max(t.c.id).label("last_id")
_top_score = func.max(t.c.score).label("top_score")
_top_margin = func.max(t.c.score - t.c.threshold).label("top_margin")
_top_rank = func.max(PRIORITY_RANK).label("top_rank")  # a generation's priority: its most urgent incident's
GROUP_COLUMNS = (
    t.c.generation_id,
    _last_id,
    func.min(t.c.created_at).label("created_at"),
    _top_score,
    _top_margin,
    func.count().label("n_matching"),
    _top_rank,
)
_SORT_KEYS = {
    "score": func.max(t.c.score),
    "margin": func.max(t.c.score - t.c.threshold),
    "priority": func.max(PRIORITY_RANK),
}
_KEY_COLUMNS = {"score": "top_score", "margin": "top_margin", "priority": "top_rank"}


@dataclass
class GenerationRow:
    """One flagged generation in the queue; `incidents`: every incident of it, highest score first."""

    generation_id: str
    last_id: int
    created_at: str
    top_score: float
    top_margin: float
    n_matching: int  # its incidents the filter selects (the aggregates are over these)
    top_rank: int = len(PRIORITIES) - 1  # PRIORITIES index of its most urgent matching incident
    incidents: list[QueueRow] = field(default_factory=list)

    @property
    def priority(self) -> str:
        """The generation's priority: `low` when every matching incident is an uncertain result, else `normal`."""
        return PRIORITIES[min(max(int(self.top_rank), 0), len(PRIORITIES) - 1)]

    @property
    def status(self) -> str:
        """The generation's review status: its least advanced incident's (open < acknowledged < resolved)."""
        return min((i.status for i in self.incidents), key=STATUSES.index, default="open")

    @property
    def labels(self) -> list[str]:
        return sorted({i.label for i in self.incidents if i.label})

    @property
    def unlabelled(self) -> int:
        return sum(i.label is None for i in self.incidents)

    @property
    def assignees(self) -> list[str]:
        return sorted({i.assignee for i in self.incidents if i.assignee})

    @property
    def snippet(self) -> str | None:
        return next((i.snippet for i in self.incidents if i.snippet), None)

    @property
    def top(self) -> QueueRow | None:
        return self.incidents[0] if self.incidents else None

    def to_json(self) -> dict[str, Any]:
        return {
            "generation_id": self.generation_id,
            "created_at": self.created_at,
            "top_score": self.top_score,
            "top_margin": self.top_margin,
            "n_matching": self.n_matching,
            "priority": self.priority,
            "status": self.status,
            "labels": self.labels,
            "unlabelled": self.unlabelled,
            "assignees": self.assignees,
            "snippet": self.snippet,
            "incidents": [i.to_json() for i in self.incidents],
        }


@dataclass
class GenerationPage(Paged[GenerationRow]):
    """A page of the grouped queue: generations with an incident in each status in `counts`."""

    sort: str = "newest"
    all: int = 0  # generations under the other filters, any status

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "sort": self.sort, "all": self.all}


def group_order(sort: str) -> list[Any]:
    """ORDER BY of the grouped queue; ties newest first."""
    key = _SORT_KEYS.get(sort.split("_")[0])
    if key is None:
        return [_last_id.asc() if sort == "oldest" else _last_id.desc()]
    return [key.desc() if sort.endswith("_desc") else key.asc(), _last_id.desc()]


def _after(sort: str, key: float | None, last_id: int) -> Any:
    """HAVING: the groups after (key, last_id) in `sort` order (the keyset of `next_generation`)."""
    newest = func.max(t.c.id)
    if sort == "newest":
        return newest < last_id
    if sort == "oldest":
        return newest > last_id
    agg = _SORT_KEYS[sort.split("_")[0]]
    beyond = agg < key if sort.endswith("_desc") else agg > key
    return or_(beyond, and_(agg == key, newest < last_id))


def _grouped(flt: QueueFilter) -> Select:
    return select(*GROUP_COLUMNS).where(*conditions(flt)).group_by(t.c.generation_id)


class GenerationQueries(IncidentQueries):
    """The grouped queue, one generation's incidents, "save & next", and the filtered export's records."""

    def generation_queue(
        self, flt: QueueFilter | None = None, page: int = 1, per_page: int = 50, sort: str | None = None
    ) -> GenerationPage:
        """One page of flagged generations under `flt` in `sort` order (queue.SORTS), with counts."""
        flt = (flt or QueueFilter()).validate()
        order = check_sort(sort)
        page = max(1, int(page))
        per_page = min(max(1, int(per_page)), MAX_PER_PAGE)
        rows_q = _grouped(flt).order_by(*group_order(order)).limit(per_page).offset((page - 1) * per_page)
        distinct = func.count(func.distinct(t.c.generation_id))
        total_q = select(distinct).where(*conditions(flt))
        others = conditions(flt, with_status=False)
        counts_q = select(t.c.status, distinct).where(*others).group_by(t.c.status)
        with self._read() as conn:
            groups = [GenerationRow(**dict(r)) for r in conn.execute(rows_q).mappings()]
            total = int(conn.execute(total_q).scalar_one())
            counts = dict.fromkeys(STATUSES, 0)
            counts.update({str(s): int(n) for s, n in conn.execute(counts_q)})
            everything = int(conn.execute(select(distinct).where(*others)).scalar_one())
            by_id = {r.generation_id: r for r in groups}
            if by_id:
                badges = select(*QUEUE_COLUMNS).where(t.c.generation_id.in_(list(by_id)))
                for r in conn.execute(badges.order_by(t.c.score.desc(), t.c.id)).mappings():
                    by_id[r["generation_id"]].incidents.append(QueueRow(**dict(r)))
        return GenerationPage(groups, total, page, per_page, counts, sort=order, all=everything)

    def generation_incidents(self, generation_id: str) -> list[Incident]:
        """Every incident of one generation with the generation's context, highest score first."""
        stmt = (
            select(t, *GENERATION_COLUMNS)
            .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
            .where(t.c.generation_id == str(generation_id))
            .order_by(t.c.score.desc(), t.c.id)
        )
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(stmt).mappings()]

    def next_generation(self, flt: QueueFilter | None, sort: str | None, after: str) -> str | None:
        """The generation that follows `after` in the filtered queue in `sort` order (None: none left).

        `after`'s own place is read under the filter when it matches it (else over all its incidents),
        so call this before an action moves it out of the filter, or after: the answer is the same."""
        flt = (flt or QueueFilter()).validate()
        order = check_sort(sort)
        mine = [t.c.generation_id == str(after)]
        with self._read() as conn:
            here = conn.execute(_grouped(flt).where(*mine)).mappings().first()
            if here is None:
                here = conn.execute(select(*GROUP_COLUMNS).where(*mine).group_by(t.c.generation_id)).mappings().first()
            if here is None:
                return None
            key = here[_KEY_COLUMNS.get(order.split("_")[0], "top_score")]
            stmt = (
                _grouped(flt)
                .where(t.c.generation_id != str(after))
                .having(_after(order, key, int(here["last_id"])))
                .order_by(*group_order(order))
                .limit(1)
            )
            row = conn.execute(stmt).first()
        return None if row is None else str(row[0])

    def incident_ids(self, flt: QueueFilter | None, generation_ids: Sequence[str]) -> list[int]:
        """The incidents of `generation_ids` that `flt` selects (a bulk action on a filtered queue's rows)."""
        flt = (flt or QueueFilter()).validate()
        stmt = (
            select(t.c.id)
            .where(t.c.generation_id.in_([str(x) for x in generation_ids]), *conditions(flt))
            .order_by(t.c.id)
        )
        with self._read() as conn:
            return [int(i) for i in conn.execute(stmt).scalars()]

    def export_records(self, flt: QueueFilter | None = None, batch: int = EXPORT_BATCH) -> Iterator[dict[str, Any]]:
        """Every incident `flt` selects, oldest first, with its generation's context and its audit trail,
        as JSON-ready dicts; read in batches (keyset on id: one short read transaction per batch)."""
        flt = (flt or QueueFilter()).validate()
        last = 0
        while True:
            stmt = (
                select(t, *GENERATION_COLUMNS)
                .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
                .where(t.c.id > last, *conditions(flt))
                .order_by(t.c.id)
                .limit(int(batch))
            )
            with self._read() as conn:
                incidents = [_incident(r) for r in conn.execute(stmt).mappings()]
                ids = [int(i.id or 0) for i in incidents]
                events: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
                if ids:
                    for e in conn.execute(select(ev).where(ev.c.incident_id.in_(ids)).order_by(ev.c.id)).mappings():
                        events[int(e["incident_id"])].append(dict(e))
            for incident in incidents:
                yield {**incident.to_json(), "events": events[int(incident.id or 0)]}
            if len(incidents) < batch:
                return
            last = ids[-1]
