"""The queue: GET / (the page: one row per flagged generation), GET /api/generations (the same as
JSON), GET /api/incidents (one row per incident, JSON) and GET /export (the filtered incidents as a
JSONL download), all filtered by the same query parameters, sorted (`sort`: newest first by
default, oldest, score or margin high/low first, priority: alerts or uncertain results first) and paged;
`priority=low|normal` keeps uncertain results (in a probe's band, not alerted) or alerts only.

Filters arrive as query parameters (the page's filter form); an empty one or `any` means no
constraint (`q`, the text search, takes any text). A malformed number is the app's own 400 (the page
shows the filter form and the error, and no rows: an unfiltered list under a filter the reviewer
believes applied would be misread), not FastAPI's 422; so is a number out of bounds (page 1..1,000,000, per_page
1..500, finite scores) and a filter the store refuses (an unknown status, an empty score range, an
unreadable or out-of-range time).
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse

from probewatch.server.review import grafana
from probewatch.server.review.state import Reviewer, ReviewState, State, base, current_identity, render
from probewatch.server.store.export_lines import incident_lines
from probewatch.server.store.generations import GenerationPage
from probewatch.server.store.queue import MAX_PER_PAGE, SORTS, QueueFilter, QueuePage, check_sort
from probewatch.server.store.records import ReviewError

router = APIRouter(dependencies=[Depends(current_identity)])

DEFAULT_PER_PAGE = 50
MAX_PAGE = 1_000_000  # with MAX_PER_PAGE: an OFFSET under 2**31
NOT_CARRIED = ("page", "done", "error")  # query parameters that are not part of "this queue"


@dataclass
class QueueQuery:
    """The queue's query parameters, parsed; `error` says why they could not be (then the defaults)."""

    flt: QueueFilter
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    error: str | None = None
    sort: str = "newest"

    def run(self, state: ReviewState) -> QueuePage:
        return state.store.queue(self.flt, self.page, self.per_page, self.sort)

    def run_grouped(self, state: ReviewState) -> GenerationPage:
        return state.store.generation_queue(self.flt, self.page, self.per_page, self.sort)


def _text(raw: str | None) -> str | None:
    value = (raw or "").strip()
    return None if value in ("", "any") else value


def _number(name: str, raw: str | None) -> float | None:
    value = _text(raw)
    try:
        number = None if value is None else float(value)
    except ValueError:
        raise ReviewError(f"{name.replace('_', ' ')} {value!r} is not a number") from None
    if number is not None and not math.isfinite(number):
        raise ReviewError(f"{name.replace('_', ' ')} {value!r} is not a finite number")
    return number


def _whole(name: str, raw: str | None, default: int, most: int) -> int:
    """A whole number in 1..most (the store's OFFSET is a 64-bit integer: a huge page must not reach it)."""
    text = (raw or "").strip()
    try:
        value = int(text) if text else default
    except ValueError:
        raise ReviewError(f"{name} {text[:40]!r} is not a whole number") from None
    if not 1 <= value <= most:
        raise ReviewError(f"{name} must be between 1 and {most}")
    return value


def queue_query(
    probe: str | None = None,
    behaviour: str | None = None,
    status: str | None = None,
    label: str | None = None,
    score_min: str | None = None,
    score_max: str | None = None,
    since: str | None = None,
    until: str | None = None,
    model: str | None = None,
    reviewer: str | None = None,
    generation_id: str | None = None,
    assignee: str | None = None,
    q: str | None = None,
    priority: str | None = None,
    sort: str | None = None,
    page: str | None = None,
    per_page: str | None = None,
) -> QueueQuery:
    """The queue's filters, sort and paging from the query string (numbers arrive as text: see the module doc)."""
    try:
        flt = QueueFilter(
            probe=_text(probe),
            behaviour=_text(behaviour),
            status=_text(status),
            label=_text(label),
            score_min=_number("score_min", score_min),
            score_max=_number("score_max", score_max),
            since=_text(since),
            until=_text(until),
            model=_text(model),
            reviewer=_text(reviewer),
            generation_id=_text(generation_id),
            assignee=_text(assignee),
            q=(q or "").strip() or None,
            priority=_text(priority),
        )
        page_no = _whole("page", page, 1, MAX_PAGE)
        size = _whole("per_page", per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)
        return QueueQuery(flt, page_no, size, sort=check_sort(_text(sort)))
    except ReviewError as exc:
        return QueueQuery(QueueFilter(), error=str(exc))


Query = Annotated[QueueQuery, Depends(queue_query)]


def queue_link(request: Request, **changes: Any) -> str:
    """The queue's URL with the request's query parameters, less `page`, changed by `changes` (None: drop)."""
    params = {k: v for k, v in request.query_params.items() if k not in NOT_CARRIED and v not in ("", "any")}
    merged = {**params, **{k: v for k, v in changes.items() if v is not None}}
    for k, v in changes.items():
        if v is None:
            merged.pop(k, None)
    return f"{base(request)}/?{urlencode(merged)}" if merged else f"{base(request)}/"


def carried(request: Request) -> str:
    """The queue's query string less `page`: the generation page carries it for "save & next"."""
    return urlencode({k: v for k, v in request.query_params.items() if k not in NOT_CARRIED and v not in ("", "any")})


def generation_link(root: str, generation_id: str, query: str = "") -> str:
    return f"{root}/generations/{quote(generation_id, safe='')}" + (f"?{query}" if query else "")


def dashboard_link(state: ReviewState, flt: QueueFilter) -> str | None:
    if not state.grafana_url:
        return None
    return grafana.queue_url(state.grafana_url, flt.since, flt.until, flt.probe)


@router.get("/", response_class=HTMLResponse)
def queue_page(request: Request, identity: Reviewer, state: State, query: Query):
    try:
        if query.error:
            raise ReviewError(query.error)
        result = query.run_grouped(state)
    except ReviewError as exc:  # the form and the error, no rows (never the unfiltered queue)
        query = QueueQuery(QueueFilter(), error=str(exc))
        result = GenerationPage(rows=[], total=0, page=1, per_page=query.per_page, sort=query.sort)
    root, carry = base(request), carried(request)
    return render(
        request,
        "queue.html",
        400 if query.error else 200,
        identity=identity,
        page=result,
        flt=query.flt,
        raw=dict(request.query_params),
        facets=state.facets(),
        link=partial(queue_link, request),
        generation=lambda gid: generation_link(root, gid, carry),
        carry=carry,
        export=f"{root}/export?{urlencode({'format': 'jsonl', **dict(_qs_items(carry))})}",
        dashboard=dashboard_link(state, query.flt),
        sorts=SORTS,
        error=query.error,
        done=request.query_params.get("done"),
        max_per_page=MAX_PER_PAGE,
    )


def _qs_items(query: str) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return [(k, v) for k, v in parse_qsl(query) if k not in ("per_page", "sort")]


@router.get("/api/incidents")
def queue_api(state: State, query: Query):
    try:
        if query.error:
            raise ReviewError(query.error)
        return query.run(state).to_json()
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


@router.get("/api/generations")
def generations_api(state: State, query: Query):
    try:
        if query.error:
            raise ReviewError(query.error)
        return query.run_grouped(state).to_json()
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)


@router.get("/export")
def export(state: State, query: Query, format: str = "jsonl"):
    """The incidents the filters select (every page; oldest first) as JSONL, one incident with its
    generation's context and audit trail per line, streamed as a download: `probewatch incidents
    export` writes the same lines (the store's `export_records`)."""
    if format != "jsonl":
        return JSONResponse({"error": f"format {format[:40]!r} not supported: jsonl"}, status_code=400)
    if query.error:
        return JSONResponse({"error": query.error}, status_code=400)
    try:
        lines = incident_lines(state.store, query.flt)
        first = next(lines, None)  # a bad filter is a 400 here, not a broken stream
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)

    def body() -> Iterator[bytes]:
        if first is not None:
            yield first.encode()
            for line in lines:
                yield line.encode()

    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="probewatch-incidents-{stamp}.jsonl"'}
    return StreamingResponse(body(), media_type="application/x-ndjson", headers=headers)
