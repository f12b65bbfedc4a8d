"""The review app: FastAPI routes over the incident store, pages rendered with Jinja2.

    GET  /                         the queue (filters as query parameters; newest first; paged)
    GET  /incidents/{id}           one incident: conversation + per-token heatmaps, probe, timeline, actions
    POST /incidents/{id}           a review action from the page's forms (CSRF-checked), then back to the page
    GET  /api/incidents            the queue as JSON (same parameters)
    GET  /api/incidents/{id}       one incident and its audit trail as JSON
    POST /api/incidents/{id}/{action}   claim|unclaim|label|severity|comment|resolve|reopen (JSON body)
    GET  /login, POST /login, POST /logout   bearer-token login for browsers (a cookie)
    GET  /metrics                  review metrics (Prometheus)
    GET  /healthz

Mountable under a prefix (`probewatch run --review` mounts it at /review): every link is built from
the request's root path. Store calls block, so the routes are plain functions (FastAPI runs them
in its thread pool).
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import Request

from probewatch.server.review.auth import TOKEN_COOKIE, AuthConfig, Identity, csrf_ok, csrf_token
from probewatch.server.review.catalog import Catalog
from probewatch.server.review.metrics import review_registry
from probewatch.server.review.view import conversation, probe_views, timeline
from probewatch.server.store.queue import MAX_PER_PAGE, QueueFilter
from probewatch.server.store.records import (
    LABELS,
    SEVERITIES,
    STATUSES,
    IncidentNotFoundError,
    IncidentStoreError,
    ReviewConflictError,
    ReviewError,
)
from probewatch.server.store.store import IncidentStore

log = logging.getLogger(__name__)
HERE = Path(__file__).resolve().parent
ACTIONS = ("claim", "takeover", "unclaim", "label", "severity", "comment", "resolve", "reopen")
_FLOAT_FIELDS = ("score_min", "score_max")
_FILTER_FIELDS = (
    "probe",
    "behaviour",
    "status",
    "label",
    "score_min",
    "score_max",
    "since",
    "until",
    "model",
    "reviewer",
    "generation_id",
)


class _NotAuthenticated(Exception):
    pass


def create_review_app(
    store: IncidentStore,
    auth: AuthConfig,
    catalog: Catalog | None = None,
    metrics_cache_s: float = 10.0,
):
    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
    from fastapi.staticfiles import StaticFiles
    from fastapi.templating import Jinja2Templates

    catalog = catalog or Catalog(discover=False)
    registry, collector, action_counter = review_registry(store, metrics_cache_s)
    csrf_key = store.secret("review_csrf_key")
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["score"] = lambda v: "—" if v is None or not math.isfinite(float(v)) else f"{float(v):+.3f}"
    templates.env.filters["when"] = lambda v: (v or "")[:19].replace("T", " ")
    templates.env.filters["words"] = lambda v: (v or "").replace("_", " ")

    app = FastAPI(title="probewatch review", version="1", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    app.state.store, app.state.collector = store, collector

    facets_cache: dict[str, Any] = {"at": -1e18, "value": None}

    def facets() -> dict[str, list[str]]:
        """The filter menus' values: distinct values over the whole store, re-read at most every 15 s."""
        if time.monotonic() - facets_cache["at"] > 15.0:
            facets_cache["value"], facets_cache["at"] = store.facets(), time.monotonic()
        return facets_cache["value"]

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def who(request: Request) -> Identity:
        identity = auth.identify(
            {k.lower(): v for k, v in request.headers.items()},
            request.cookies,
            request.client.host if request.client else None,
        )
        if identity is None:
            raise _NotAuthenticated()
        return identity

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("identity", None)
        context.update(base=base(request), labels=LABELS, severities=SEVERITIES, statuses=STATUSES)
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(_NotAuthenticated)
    def not_authenticated(request: Request, exc: _NotAuthenticated):
        if request.url.path.startswith(f"{base(request)}/api/"):
            return JSONResponse(
                {"error": "authentication required (Authorization: Bearer TOKEN or a trusted proxy header)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        if auth.tokens:
            return RedirectResponse(f"{base(request)}/login?{urlencode({'next': str(request.url.path)})}", 303)
        return page(
            request,
            "error.html",
            401,
            title="Not signed in",
            message="This review app takes reviewers from a trusted proxy header; none came with this request.",
        )

    @app.exception_handler(IncidentStoreError)
    def store_down(request: Request, exc: IncidentStoreError):
        return PlainTextResponse(f"incident store unavailable: {exc}", status_code=503)

    # -- queue ------------------------------------------------------------------------------------
    def queue_args(request: Request) -> tuple[QueueFilter, int, int]:
        q = request.query_params
        values: dict[str, Any] = {}
        for name in _FILTER_FIELDS:
            raw = (q.get(name) or "").strip()
            if not raw or raw == "any":
                continue
            if name in _FLOAT_FIELDS:
                try:
                    values[name] = float(raw)
                except ValueError:
                    raise ReviewError(f"{name.replace('_', ' ')} {raw!r} is not a number") from None
            else:
                values[name] = raw
        try:
            page_no = int(q.get("page") or 1)
            per_page = int(q.get("per_page") or 50)
        except ValueError:
            raise ReviewError("page and per_page must be whole numbers") from None
        return QueueFilter(**values), page_no, per_page

    @app.get("/", response_class=HTMLResponse)
    def queue_page(request: Request):
        identity = who(request)
        try:
            flt, page_no, per_page = queue_args(request)
            result = store.queue(flt, page_no, per_page)
            error = None
        except ReviewError as exc:
            flt, page_no, per_page, error = QueueFilter(), 1, 50, str(exc)
            result = store.queue(flt, 1, 50)
        params = {k: v for k, v in request.query_params.items() if k not in ("page",) and v not in ("", "any")}

        def link(**changes: Any) -> str:
            merged = {**params, **{k: v for k, v in changes.items() if v is not None}}
            for k, v in changes.items():
                if v is None:
                    merged.pop(k, None)
            return f"{base(request)}/?{urlencode(merged)}" if merged else f"{base(request)}/"

        return page(
            request,
            "queue.html",
            400 if error else 200,
            identity=identity,
            page=result,
            flt=flt,
            raw=dict(request.query_params),
            facets=facets(),
            link=link,
            error=error,
            max_per_page=MAX_PER_PAGE,
        )

    @app.get("/api/incidents")
    def queue_api(request: Request):
        who(request)
        try:
            flt, page_no, per_page = queue_args(request)
            return store.queue(flt, page_no, per_page).to_json()
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    # -- one incident -----------------------------------------------------------------------------
    def incident_context(incident_id: int) -> dict[str, Any]:
        incident = store.get(incident_id)
        events = store.events(incident_id)
        siblings = {i.probe: int(i.id or 0) for i in store.list(generation_id=incident.generation_id, limit=1000)}
        manifest = catalog.manifest(incident.probe, incident.bundle_version, incident.model_fingerprint)
        tokenizer = catalog.tokenizer(manifest)
        return {
            "incident": incident,
            "events": events,
            "views": probe_views(incident, siblings, tokenizer),
            "messages": conversation(incident, tokenizer),
            "timeline": timeline(incident, events),
            "manifest": manifest,
            "decoded": tokenizer is not None,
        }

    @app.get("/incidents/{incident_id}", response_class=HTMLResponse)
    def incident_page(request: Request, incident_id: int):
        identity = who(request)
        try:
            context = incident_context(incident_id)
        except IncidentNotFoundError as exc:
            return page(request, "error.html", 404, identity=identity, title="No such incident", message=str(exc))
        return page(
            request,
            "incident.html",
            identity=identity,
            csrf=csrf_token(csrf_key, identity.reviewer),
            done=request.query_params.get("done"),
            error=request.query_params.get("error"),
            **context,
        )

    @app.get("/api/incidents/{incident_id}")
    def incident_api(request: Request, incident_id: int):
        who(request)
        try:
            incident = store.get(incident_id)
        except IncidentNotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return {"incident": incident.to_json(), "events": [e.to_json() for e in store.events(incident_id)]}

    def act(incident_id: int, reviewer: str, action: str, fields: dict[str, Any]):
        if action not in ACTIONS:
            raise ReviewError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
        comment = fields.get("comment") or None
        if action in ("claim", "takeover"):
            result = store.claim(incident_id, reviewer, force=action == "takeover" or bool(fields.get("force")))
        elif action == "unclaim":
            result = store.unclaim(incident_id, reviewer)
        elif action == "label":
            result = store.label(incident_id, reviewer, str(fields.get("label") or ""), comment=comment)
        elif action == "severity":
            result = store.set_severity(incident_id, reviewer, fields.get("severity") or None)
        elif action == "comment":
            result = store.comment(incident_id, reviewer, str(comment or ""))
        elif action == "resolve":
            result = store.resolve(incident_id, reviewer, comment=comment)
        else:
            result = store.reopen(incident_id, reviewer, comment=comment)
        action_counter.labels(action="claim" if action == "takeover" else action).inc()
        collector.invalidate()
        facets_cache["at"] = -1e18  # a new reviewer shows up in the reviewer menu at once
        return result

    @app.post("/incidents/{incident_id}")
    async def incident_form(request: Request, incident_id: int):
        identity = who(request)
        form = await request.form()
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        target = f"{base(request)}/incidents/{incident_id}"
        if identity.cookie and not csrf_ok(csrf_key, identity.reviewer, fields.get("csrf")):
            return PlainTextResponse("form expired or forged (CSRF token mismatch): reload the page", status_code=403)
        action = fields.get("action", "")
        from starlette.concurrency import run_in_threadpool

        try:
            await run_in_threadpool(act, incident_id, identity.reviewer, action, fields)
        except IncidentNotFoundError as exc:
            return PlainTextResponse(str(exc), status_code=404)
        except ReviewError as exc:
            return RedirectResponse(f"{target}?{urlencode({'error': str(exc)})}#actions", 303)
        return RedirectResponse(f"{target}?{urlencode({'done': action})}#actions", 303)

    @app.post("/api/incidents/{incident_id}/{action}")
    async def incident_action_api(request: Request, incident_id: int, action: str):
        identity = who(request)
        try:
            body = await request.json() if (await request.body()) else {}
        except ValueError:
            return JSONResponse({"error": "the body must be JSON"}, status_code=400)
        if not isinstance(body, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, status_code=400)
        if identity.cookie and not csrf_ok(csrf_key, identity.reviewer, request.headers.get("x-csrf-token")):
            return JSONResponse({"error": "CSRF token missing or wrong (X-CSRF-Token)"}, status_code=403)
        from starlette.concurrency import run_in_threadpool

        try:
            incident = await run_in_threadpool(act, incident_id, identity.reviewer, action, body)
        except IncidentNotFoundError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except ReviewConflictError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)
        except ReviewError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return {"incident": incident.to_json(), "events": [e.to_json() for e in store.events(incident_id)]}

    # -- sign-in with a token -----------------------------------------------------------------------
    @app.get("/login", response_class=HTMLResponse)
    def login_page(request: Request):
        return page(
            request, "login.html", next=request.query_params.get("next") or "", error=None, tokens=bool(auth.tokens)
        )

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        token = str(form.get("token") or "")
        target = str(form.get("next") or "")
        if not target.startswith(base(request) + "/") or target.startswith("//") or "\\" in target:
            target = f"{base(request)}/"
        if not auth.tokens or auth.token_reviewer(token) is None:
            return page(request, "login.html", 401, next=target, error="unknown token", tokens=bool(auth.tokens))
        response = RedirectResponse(target, 303)
        response.set_cookie(
            TOKEN_COOKIE,
            token.strip(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path=f"{base(request)}/",
            max_age=12 * 3600,
        )
        return response

    @app.post("/logout")
    def logout(request: Request):
        response = RedirectResponse(f"{base(request)}/login", 303)
        response.delete_cookie(TOKEN_COOKIE, path=f"{base(request)}/")
        return response

    # -- operations ---------------------------------------------------------------------------------
    @app.get("/metrics")
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/healthz")
    def healthz():
        try:
            store.count()
        except Exception as exc:  # noqa: BLE001 - reported as unhealthy
            return JSONResponse({"status": "error", "store": str(exc)}, status_code=503)
        return {"status": "ok", "store": str(store.path), "backend": store.backend}

    return app
