"""The review app: FastAPI routes over the incident store, pages rendered with Jinja2.

    GET  /                         the queue, one row per flagged generation (filters, q, sort; paged)
    GET  /api/generations          the grouped queue as JSON (same parameters)
    GET  /api/incidents            the per-incident queue as JSON (same parameters)
    GET  /export?format=jsonl      the filtered incidents as JSONL, streamed (a download)         routes_queue
    GET  /generations/{gid}        one generation: every probe's incident, a verdict per probe or for all
    POST /generations/{gid}        verdicts (+ resolve, + assign) in one post; "save & next"
    GET  /api/generations/{gid}    the generation's incidents as JSON
    POST /api/generations/{gid}    the same review as JSON                                        routes_generation
    POST /bulk, POST /api/bulk     label / assign / resolve the selected generations              routes_bulk
    GET  /incidents/{id}           one incident: conversation + per-token heatmaps, probe, timeline, actions
    POST /incidents/{id}           a review action from the page's forms (CSRF-checked), then back to the page
    GET  /api/incidents/{id}       one incident and its audit trail as JSON
    POST /api/incidents/{id}/{action}   claim|unclaim|label|severity|comment|resolve|reopen (JSON body)
    GET  /probes/{probe}/quality   the probe's quality report section (the probe card links it)   routes_incident
    GET  /login, POST /login, POST /logout   bearer-token login for browsers (a cookie)            routes_session
    GET  /metrics                  review metrics (Prometheus)                                     routes_ops
    GET  /healthz, GET /favicon.ico                                                                routes_ops

Every request first passes `HostGuard` (hosts.py): a Host header outside `auth.allowed_hosts` is
answered 400 (DNS rebinding defence), counted in probewatch_review_rejected_hosts_total.
Mountable under a prefix (`probewatch run --review` mounts it at /review): every link is built from
the request's root path. The routes share one `ReviewState` (state.py) on `app.state.review`; a
request without a reviewer is answered here (401 for the API, else the login page or an error page).
"""

from __future__ import annotations

import logging
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from probewatch.server.review import (
    routes_bulk,
    routes_generation,
    routes_incident,
    routes_ops,
    routes_queue,
    routes_session,
)
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.catalog import Catalog
from probewatch.server.review.drift import DriftReader
from probewatch.server.review.hosts import HostGuard, rejected_hosts_counter
from probewatch.server.review.metrics import review_registry
from probewatch.server.review.state import (
    HERE,
    ApiError,
    NotAuthenticated,
    ReviewState,
    base,
    render,
    request_identity,
    review_state,
)
from probewatch.server.store import IncidentStore
from probewatch.server.store.records import IncidentStoreError


def not_authenticated(request: Request, exc: Exception) -> Response:
    if request.url.path.startswith(f"{base(request)}/api/"):
        return JSONResponse(
            {"error": "authentication required (Authorization: Bearer TOKEN or a trusted proxy header)"},
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )
    if review_state(request).auth.tokens:
        return RedirectResponse(f"{base(request)}/login?{urlencode({'next': str(request.url.path)})}", 303)
    return render(
        request,
        "error.html",
        401,
        title="Not signed in",
        message="This review app takes reviewers from a trusted proxy header; none came with this request.",
    )


def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


log = logging.getLogger(__name__)


def store_down(request: Request, exc: Exception) -> Response:
    """503 with a fixed message: the store's error names its location (a path or a database URL)."""
    log.warning("review: incident store unavailable: %s", exc)
    return PlainTextResponse("incident store unavailable; see the review app's log", status_code=503)


def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (an unknown path, a wrong method): a page for browsers, JSON under /api/."""
    assert isinstance(exc, StarletteHTTPException)
    status = exc.status_code
    text = "no such page" if status == 404 else str(exc.detail)[:200]
    if request.url.path.startswith(f"{base(request)}/api/"):
        return JSONResponse({"error": text}, status_code=status, headers=exc.headers)
    title = "Not found" if status == 404 else f"Error {status}"
    identity = request_identity(request, review_state(request))
    return render(request, "error.html", status, identity=identity, title=title, message=f"{text}.")


def create_review_app(
    store: IncidentStore,
    auth: AuthConfig,
    catalog: Catalog | None = None,
    metrics_cache_s: float = 10.0,
    grafana_url: str | None = None,
    prometheus_url: str | None = None,
) -> FastAPI:
    """The app over `store`; `grafana_url`: Grafana's base URL for dashboard links (None:
    $PROBEWATCH_GRAFANA_URL, unset: no links)."""
    from probewatch import envs

    registry, collector, action_counter = review_registry(store, metrics_cache_s)
    state = ReviewState(
        store=store,
        auth=auth,
        catalog=catalog or Catalog(discover=False),
        registry=registry,
        collector=collector,
        action_counter=action_counter,
        csrf_key=store.secret("review_csrf_key"),
        grafana_url=grafana_url or envs.grafana_url(),
        drift=DriftReader(prometheus_url or envs.prometheus_url()),
    )
    state.catalog.warm()  # tokenizers load in the background: the first incident page must not wait
    app = FastAPI(title="probewatch review", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.review, app.state.store, app.state.collector = state, store, collector
    app.add_exception_handler(NotAuthenticated, not_authenticated)
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(IncidentStoreError, store_down)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_middleware(HostGuard, allowed=auth.allowed_hosts, rejected=rejected_hosts_counter(registry))
    for module in (routes_queue, routes_generation, routes_bulk, routes_incident, routes_session, routes_ops):
        app.include_router(module.router)
    return app
