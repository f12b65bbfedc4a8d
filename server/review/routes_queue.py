"""The queue: GET / (the page) and GET /api/incidents (JSON), filtered by query parameters, newest first, paged.

Filters arrive as query parameters (the page's filter form); an empty one or `any` means no
constraint. A malformed number is the app's own 400 (the page still shows the unfiltered queue,
with the error), not FastAPI's 422; so is a number out of bounds (page 1..1,000,000, per_page
1..500, finite scores) and a filter the store refuses (an unknown status, an empty score range, an
unreadable or out-of-range time).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, JSONResponse

from probewatch.server.review.state import Reviewer, ReviewState, State, base, current_identity, render
from probewatch.server.store.queue import MAX_PER_PAGE, QueueFilter, QueuePage
from probewatch.server.store.records import ReviewError

router = APIRouter(dependencies=[Depends(current_identity)])

DEFAULT_PER_PAGE = 50
MAX_PAGE = 1_000_000  # with MAX_PER_PAGE: an OFFSET under 2**31


@dataclass
class QueueQuery:
    """The queue's query parameters, parsed; `error` says why they could not be (then the defaults)."""

    flt: QueueFilter
    page: int = 1
    per_page: int = DEFAULT_PER_PAGE
    error: str | None = None

    def run(self, state: ReviewState) -> QueuePage:
        return state.store.queue(self.flt, self.page, self.per_page)


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
    page: str | None = None,
    per_page: str | None = None,
) -> QueueQuery:
    """The queue's filters and paging from the query string (numbers arrive as text: see the module doc)."""
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
        )
        page_no = _whole("page", page, 1, MAX_PAGE)
        return QueueQuery(flt, page_no, _whole("per_page", per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE))
    except ReviewError as exc:
        return QueueQuery(QueueFilter(), error=str(exc))


Query = Annotated[QueueQuery, Depends(queue_query)]


def queue_link(request: Request, **changes: Any) -> str:
    """The queue's URL with the request's query parameters, less `page`, changed by `changes` (None: drop)."""
    params = {k: v for k, v in request.query_params.items() if k not in ("page",) and v not in ("", "any")}
    merged = {**params, **{k: v for k, v in changes.items() if v is not None}}
    for k, v in changes.items():
        if v is None:
            merged.pop(k, None)
    return f"{base(request)}/?{urlencode(merged)}" if merged else f"{base(request)}/"


@router.get("/", response_class=HTMLResponse)
def queue_page(request: Request, identity: Reviewer, state: State, query: Query):
    try:
        if query.error:
            raise ReviewError(query.error)
        result = query.run(state)
    except ReviewError as exc:  # the unfiltered queue, with the error
        query = QueueQuery(QueueFilter(), error=str(exc))
        result = query.run(state)
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
        error=query.error,
        max_per_page=MAX_PER_PAGE,
    )


@router.get("/api/incidents")
def queue_api(state: State, query: Query):
    try:
        if query.error:
            raise ReviewError(query.error)
        return query.run(state).to_json()
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
