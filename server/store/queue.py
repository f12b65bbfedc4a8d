"""The review queue: filters, sort orders, paging and per-status counts over the incident table.

Built for thousands of rows: the page query reads only the columns a queue row shows (a short
prefix of the response, never the token scores), ordered by id (newest first) with LIMIT/OFFSET
on the `(status, id)` / primary-key indexes; per-status counts are one GROUP BY under the same
filters (without the status filter, so the tabs always show every status). The grouped queue (one
row per flagged generation) builds on the same filters: `generations.py`.

Text search (`q`) is a case-insensitive substring match over the prompt and response *as the store
keeps them* (`--store-text`: redacted text is what is searched, so a redacted e-mail address is
not found by its address; under `none` nothing matches). SQL: `lower(col) LIKE lower('%q%')` with
`%`, `_` and the escape character taken literally (SQLite folds ASCII case only; PostgreSQL folds
every letter); it scans the filtered rows (no text index), which is what a 10,000-row queue affords.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sqlalchemy import ColumnElement, case, func, or_, select

from probewatch.server.store.records import LABELS, PRIORITIES, STATUSES, ReviewError
from probewatch.server.store.tables import incidents as t

SNIPPET_CHARS = 160
MAX_PER_PAGE = 500
MAX_QUERY_CHARS = 200
#: the queue's sort orders (`sort=`): newest first (the default), oldest first, by score or by margin
#: (score - threshold: how far over its own threshold, comparable across probes), high or low first, or by
#: priority (alerts before uncertain results, or the other way round; newest first within a priority)
SORTS = ("newest", "oldest", "score_desc", "score_asc", "margin_desc", "margin_asc", "priority_desc", "priority_asc")
#: a priority's rank (records.PRIORITIES order: low = 0), what `priority_*` sorts by
PRIORITY_RANK = case({p: i for i, p in enumerate(PRIORITIES)}, value=t.c.priority, else_=len(PRIORITIES) - 1)


@dataclass
class QueueFilter:
    """What the queue shows; every field optional (None: no constraint)."""

    probe: str | None = None
    behaviour: str | None = None
    status: str | None = None  # open | acknowledged | resolved | unresolved (open + acknowledged)
    label: str | None = None  # true_positive | false_positive | unsure | unlabelled
    score_min: float | None = None
    score_max: float | None = None
    since: str | None = None  # ISO-8601 time (UTC when no offset); created at or after
    until: str | None = None  # created before
    model: str | None = None  # model fingerprint, or a prefix of it
    reviewer: str | None = None  # claimed or labelled by
    generation_id: str | None = None
    assignee: str | None = None  # assigned to (claimed by) exactly this reviewer: "assigned to me"
    q: str | None = None  # text search over the stored prompt and response (see the module doc)
    priority: str | None = None  # records.PRIORITIES: low (uncertain results) | normal (alerts)

    def validate(self) -> QueueFilter:
        self.since, self.until = parse_time(self.since, "since"), parse_time(self.until, "until")
        if self.q is not None and len(self.q) > MAX_QUERY_CHARS:
            raise ReviewError(f"search text of {len(self.q)} characters is over the {MAX_QUERY_CHARS}-character limit")
        if self.status not in (None, *STATUSES, "unresolved"):
            raise ReviewError(f"status {self.status!r} not one of {', '.join((*STATUSES, 'unresolved'))}")
        if self.priority not in (None, *PRIORITIES):
            raise ReviewError(f"priority {str(self.priority)[:40]!r} not one of {', '.join(PRIORITIES)}")
        if self.label not in (None, *LABELS, "unlabelled"):
            raise ReviewError(f"label {self.label!r} not one of {', '.join((*LABELS, 'unlabelled'))}")
        if self.score_min is not None and self.score_max is not None and self.score_min > self.score_max:
            raise ReviewError(f"score range is empty (min {self.score_min} > max {self.score_max})")
        return self


@dataclass
class QueueRow:
    id: int
    created_at: str
    generation_id: str
    probe: str
    behaviour: str
    score: float
    threshold: float
    status: str
    generation_status: str
    label: str | None
    severity: str | None
    assignee: str | None
    model_fingerprint: str
    bundle_version: str
    snippet: str | None
    priority: str = "normal"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


RowT = TypeVar("RowT", bound=Any)


@dataclass
class Paged(Generic[RowT]):
    """One page of a queue (incidents or generations) and where it stands in the whole."""

    rows: list[RowT]
    total: int  # rows matching the filter
    page: int
    per_page: int
    counts: dict[str, int] = field(default_factory=dict)  # per status, under the other filters

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": [r.to_json() for r in self.rows],
            "total": self.total,
            "page": self.page,
            "per_page": self.per_page,
            "pages": self.pages,
            "counts": self.counts,
        }


class QueuePage(Paged[QueueRow]):
    """A page of the per-incident queue."""


def iso(when: _dt.datetime) -> str:
    """One fixed-width UTC format, so that times compare correctly as text (SQLite and PostgreSQL)."""
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return when.astimezone(_dt.timezone.utc).isoformat(timespec="milliseconds")


def now_iso() -> str:
    return iso(_dt.datetime.now(_dt.timezone.utc))


_RELATIVE = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_AGE_S = 100 * 365 * 86400  # a relative age beyond this is a typo (and a huge one overflows datetime)


def parse_time(value: str | None, what: str) -> str | None:
    """An ISO-8601 time (UTC when it has no offset) or a relative age like `24h`, `7d` -> stored form."""
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    unit = text[-1:].lower()
    if unit in _RELATIVE and text[:-1].replace(".", "", 1).isdigit():
        seconds = float(text[:-1]) * _RELATIVE[unit]
        if seconds > MAX_AGE_S:
            raise ReviewError(f"{what} {text[:40]!r} is too long ago: at most {MAX_AGE_S // 86400}d")
        return iso(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=seconds))
    try:
        return iso(_dt.datetime.fromisoformat(text.replace("Z", "+00:00")))
    except (ValueError, OverflowError):  # OverflowError: an offset moves it past year 1 or 9999
        raise ReviewError(
            f"{what} {text[:80]!r} is not a time: use ISO-8601 (2026-11-30T12:00) or an age (24h, 7d)"
        ) from None


def conditions(f: QueueFilter, with_status: bool = True) -> list[ColumnElement[bool]]:
    out: list[ColumnElement[bool]] = []
    exact = (
        (t.c.probe, f.probe),
        (t.c.behaviour, f.behaviour),
        (t.c.generation_id, f.generation_id),
        (t.c.priority, f.priority),
    )
    for column, value in (*exact, (t.c.assignee, f.assignee)):
        if value:
            out.append(column == value)
    if with_status and f.status:
        out.append(t.c.status.in_(["open", "acknowledged"]) if f.status == "unresolved" else t.c.status == f.status)
    if f.label:
        out.append(t.c.label.is_(None) if f.label == "unlabelled" else t.c.label == f.label)
    if f.score_min is not None:
        out.append(t.c.score >= float(f.score_min))
    if f.score_max is not None:
        out.append(t.c.score <= float(f.score_max))
    if f.since:
        out.append(t.c.created_at >= f.since)
    if f.until:
        out.append(t.c.created_at < f.until)
    if f.model:
        out.append(t.c.model_fingerprint.startswith(f.model, autoescape=True))
    if f.reviewer:
        out.append(or_(t.c.assignee == f.reviewer, t.c.labelled_by == f.reviewer))
    if f.q:
        out.append(or_(t.c.prompt.icontains(f.q, autoescape=True), t.c.response.icontains(f.q, autoescape=True)))
    return out


def check_sort(sort: str | None) -> str:
    """`sort` when it is one of SORTS (None: the default, newest); ReviewError otherwise."""
    if sort in (None, ""):
        return "newest"
    if sort not in SORTS:
        raise ReviewError(f"sort {str(sort)[:40]!r} not one of {', '.join(SORTS)}")
    return str(sort)


def incident_order(sort: str) -> list[Any]:
    """ORDER BY of the per-incident queue; ties newest first."""
    key = {"score": t.c.score, "margin": t.c.score - t.c.threshold, "priority": PRIORITY_RANK}.get(sort.split("_")[0])
    if key is None:
        return [t.c.id.asc() if sort == "oldest" else t.c.id.desc()]
    return [key.desc() if sort.endswith("_desc") else key.asc(), t.c.id.desc()]


QUEUE_COLUMNS = (
    t.c.id,
    t.c.created_at,
    t.c.generation_id,
    t.c.probe,
    t.c.behaviour,
    t.c.score,
    t.c.threshold,
    t.c.status,
    t.c.generation_status,
    t.c.label,
    t.c.severity,
    t.c.assignee,
    t.c.model_fingerprint,
    t.c.bundle_version,
    func.substr(t.c.response, 1, SNIPPET_CHARS).label("snippet"),
    t.c.priority,
)


def page_query(f: QueueFilter, page: int, per_page: int, sort: str = "newest"):
    where = conditions(f)
    offset = (page - 1) * per_page
    rows = select(*QUEUE_COLUMNS).where(*where).order_by(*incident_order(sort)).limit(per_page).offset(offset)
    total = select(func.count()).select_from(t).where(*where)
    counts = select(t.c.status, func.count()).where(*conditions(f, with_status=False)).group_by(t.c.status)
    return rows, total, counts
