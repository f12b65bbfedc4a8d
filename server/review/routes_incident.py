"""One incident: its page and the review actions on it, from the page's forms and from the JSON API.

    GET  /incidents/{id}                 conversation + per-token heatmaps, probe, timeline, actions
    POST /incidents/{id}                 a review action from the page's forms (CSRF-checked), then back to the page
    GET  /api/incidents/{id}             the incident and its audit trail as JSON
    POST /api/incidents/{id}/{action}    claim|unclaim|label|severity|comment|resolve|reopen (JSON body)

A reviewer signed in by a cookie (a browser) sends the CSRF token with every action: the form's
`csrf` field, or the API's X-CSRF-Token header. Store calls block, so the routes are plain functions
(FastAPI runs them in its thread pool); the request bodies are read by async dependencies.
"""

from __future__ import annotations

import json
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse

from probewatch.server.review.actions import act
from probewatch.server.review.auth import csrf_ok, csrf_token
from probewatch.server.review.state import ApiError, Reviewer, ReviewState, State, base, current_identity, render
from probewatch.server.review.view import conversation, probe_views, timeline, token_note
from probewatch.server.store.records import Incident, IncidentNotFoundError, ReviewConflictError, ReviewError

router = APIRouter(dependencies=[Depends(current_identity)])
MAX_INCIDENT_ID = 2**63 - 1


async def form_fields(request: Request) -> dict[str, str]:
    """The posted form's text fields."""
    form = await request.form()
    return {k: v for k, v in form.items() if isinstance(v, str)}


async def json_object(request: Request) -> dict[str, Any]:
    """The JSON object in the body ({} for an empty body); ApiError 400 for anything else."""
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        raise ApiError(400, "the body must be JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    return body


def known_id(incident_id: int) -> int:
    """`incident_id`, or IncidentNotFoundError (404) when no row can have it: a path id past the
    database's 64-bit integers would otherwise fail inside the driver (a 500)."""
    if not 1 <= incident_id <= MAX_INCIDENT_ID:
        raise IncidentNotFoundError(f"no incident with id {incident_id}")
    return incident_id


def incident_context(state: ReviewState, incident_id: int) -> dict[str, Any]:
    store, catalog = state.store, state.catalog
    known_id(incident_id)
    incident = store.get(incident_id)
    events = store.events(incident_id)
    siblings = {i.probe: int(i.id or 0) for i in store.find(generation_id=incident.generation_id, limit=1000)}
    manifest = catalog.manifest(incident.probe, incident.bundle_version, incident.model_fingerprint)
    tokenizer = catalog.tokenizer(manifest)
    return {
        "incident": incident,
        "events": events,
        "views": probe_views(incident, siblings, tokenizer),
        "messages": conversation(incident, tokenizer),
        "timeline": timeline(incident, events),
        "manifest": manifest,
        "decoded": tokenizer is not None or bool(incident.token_texts),
        "token_note": token_note(incident, tokenizer),
        "drift": state.drift.line(incident.probe),
    }


def incident_json(state: ReviewState, incident_id: int, incident: Incident) -> dict[str, Any]:
    """An incident and its audit trail."""
    events = state.store.events(incident_id)
    return {"incident": incident.to_json(), "events": [e.to_json() for e in events]}


@router.get("/incidents/{incident_id}", response_class=HTMLResponse)
def incident_page(
    request: Request,
    incident_id: int,
    identity: Reviewer,
    state: State,
    done: str | None = None,
    error: str | None = None,
):
    try:
        context = incident_context(state, incident_id)
    except IncidentNotFoundError as exc:
        return render(request, "error.html", 404, identity=identity, title="No such incident", message=str(exc))
    csrf = csrf_token(state.csrf_key, identity.reviewer)
    return render(request, "incident.html", identity=identity, csrf=csrf, done=done, error=error, **context)


@router.post("/incidents/{incident_id}")
def incident_form(
    request: Request,
    incident_id: int,
    identity: Reviewer,
    state: State,
    fields: Annotated[dict[str, str], Depends(form_fields)],
):
    target = f"{base(request)}/incidents/{incident_id}"
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, fields.get("csrf")):
        return PlainTextResponse("form expired or forged (CSRF token mismatch): reload the page", status_code=403)
    action = fields.get("action", "")
    try:
        act(state, known_id(incident_id), identity.reviewer, action, fields)
    except IncidentNotFoundError as exc:
        return PlainTextResponse(str(exc), status_code=404)
    except ReviewError as exc:
        return RedirectResponse(f"{target}?{urlencode({'error': str(exc)})}#actions", 303)
    return RedirectResponse(f"{target}?{urlencode({'done': action})}#actions", 303)


@router.get("/api/incidents/{incident_id}")
def incident_api(incident_id: int, state: State):
    try:
        incident = state.store.get(known_id(incident_id))
    except IncidentNotFoundError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    return incident_json(state, incident_id, incident)


@router.post("/api/incidents/{incident_id}/{action}")
def incident_action_api(
    incident_id: int,
    action: str,
    identity: Reviewer,
    state: State,
    body: Annotated[dict[str, Any], Depends(json_object)],
    x_csrf_token: Annotated[str | None, Header()] = None,
):
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, x_csrf_token):
        return JSONResponse({"error": "CSRF token missing or wrong (X-CSRF-Token)"}, status_code=403)
    try:
        incident = act(state, known_id(incident_id), identity.reviewer, action, body)
    except IncidentNotFoundError as exc:
        return JSONResponse({"error": str(exc)}, status_code=404)
    except ReviewConflictError as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return incident_json(state, incident_id, incident)
