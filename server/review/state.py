"""What every review route shares: the app's `ReviewState` (on `app.state.review`) and the request dependencies.

State      Annotated dependency: the ReviewState of the app serving the request
Reviewer   Annotated dependency: the request's Identity; NotAuthenticated when it has none
           (app.py answers that with 401, a redirect to /login, or an error page)
base()     the request's root path (the app is mountable under a prefix; every link starts with it)
render()   a Jinja2 page with the context every template expects (the reviewer's CSRF token included)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from prometheus_client import CollectorRegistry, Counter

from probewatch.server.review.auth import AuthConfig, Identity, csrf_token
from probewatch.server.review.catalog import Catalog
from probewatch.server.review.drift import DriftReader
from probewatch.server.review.metrics import ReviewCollector
from probewatch.server.review.probe_card import VERDICT_EFFECT
from probewatch.server.store import IncidentStore
from probewatch.server.store.records import LABELS, SEVERITIES, STATUSES

HERE = Path(__file__).resolve().parent
FACETS_TTL_S = 15.0


class NotAuthenticated(Exception):
    """The request names no reviewer (app.py decides how to answer)."""


class ApiError(Exception):
    """A JSON API refusal: `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["score"] = lambda v: "—" if v is None or not math.isfinite(float(v)) else f"{float(v):+.3f}"
    templates.env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ")
    templates.env.filters["words"] = lambda v: (v or "").replace("_", " ")
    return templates


@dataclass
class ReviewState:
    """The store and everything built around it once per app."""

    store: IncidentStore
    auth: AuthConfig
    catalog: Catalog
    registry: CollectorRegistry
    collector: ReviewCollector
    action_counter: Counter
    csrf_key: bytes
    grafana_url: str | None = None  # Grafana's base URL: links to the probewatch dashboard (grafana.py)
    drift: DriftReader = field(default_factory=lambda: DriftReader(None))  # probe cards' live drift (drift.py)
    templates: Jinja2Templates = field(default_factory=make_templates)
    _facets: dict[str, list[str]] | None = None
    _facets_at: float = -1e18

    def facets(self) -> dict[str, list[str]]:
        """The filter menus' values: distinct values over the whole store, re-read at most every 15 s."""
        if self._facets is None or time.monotonic() - self._facets_at > FACETS_TTL_S:
            self._facets, self._facets_at = self.store.facets(), time.monotonic()
        return self._facets

    def forget_facets(self) -> None:
        self._facets_at = -1e18


def review_state(request: Request) -> ReviewState:
    return request.app.state.review


State = Annotated[ReviewState, Depends(review_state)]


def base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


def request_identity(request: Request, state: ReviewState) -> Identity | None:
    """The request's reviewer, or None (for routes that also serve anonymous requests)."""
    return state.auth.identify(
        {k.lower(): v for k, v in request.headers.items()},
        request.cookies,
        request.client.host if request.client else None,
    )


def current_identity(request: Request, state: State) -> Identity:
    identity = request_identity(request, state)
    if identity is None:
        raise NotAuthenticated()
    return identity


Reviewer = Annotated[Identity, Depends(current_identity)]


def render(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    context.setdefault("identity", None)
    state = review_state(request)
    if context["identity"] is not None:  # every page's sign-out form posts it (base.html)
        context.setdefault("csrf", csrf_token(state.csrf_key, context["identity"].reviewer))
    context.update(
        base=base(request), labels=LABELS, severities=SEVERITIES, statuses=STATUSES, verdict_effect=VERDICT_EFFECT
    )
    return state.templates.TemplateResponse(request, name, context, status_code=status_code)
