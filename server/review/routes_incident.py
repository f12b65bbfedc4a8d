"""One incident: its page and the review actions on it, from the page's forms and from the JSON API.

    GET  /incidents/{id}                 conversation + per-token heatmaps, probe, timeline, actions
    POST /incidents/{id}                 a review action from the page's forms (CSRF-checked), then back to the page
    GET  /api/incidents/{id}             the incident and its audit trail as JSON
    POST /api/incidents/{id}/{action}    claim|unclaim|label|severity|comment|resolve|reopen (JSON body)
    GET  /probes/{probe}/quality         the probe's section of the quality report (the probe card links it)

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
from probewatch.server.review.probe_card import probe_card, quality_section
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


def missing(incident_id: int) -> str:
    """The 404 message: the store's own says where the store lives, which no page or API answer shows."""
    return f"no incident with id {incident_id}"


def incident_context(state: ReviewState, incident_id: int) -> dict[str, Any]:
    store, catalog = state.store, state.catalog
    known_id(incident_id)
    incident = store.get(incident_id)
    events = store.events(incident_id)
    siblings = {i.probe: int(i.id or 0) for i in store.find(generation_id=incident.generation_id, limit=1000)}
    manifest = catalog.manifest(incident.probe, incident.bundle_version, incident.model_fingerprint)
    # stored token texts: never wait for the tokenizer (it only turns the prompt into chat messages)
    tokenizer = catalog.tokenizer(manifest, wait=not incident.token_texts)
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
        "card": probe_card(incident.probe, incident.behaviour, manifest),
        "quality_report": quality_section(incident.probe) is not None,
    }


def heatmap_tabs(request: Request, views: list[Any], chosen: str | None) -> dict[str, Any]:
    """The heatmap tab shown (`?probe=ID`, else the first) and each tab's link: the tabs are links to this
    page, so they switch without JavaScript (review.js switches them in place)."""
    names = [v.probe for v in views]
    selected = chosen if chosen in names else (names[0] if names else None)
    keep = [(k, v) for k, v in request.query_params.multi_items() if k not in ("probe", "done", "error")]

    def link(probe: str) -> str:
        return "?" + urlencode([*keep, ("probe", probe)]) + "#heatmaps"

    return {"selected": selected, "tab_link": link}


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
    probe: str | None = None,
):
    try:
        context = incident_context(state, incident_id)
    except IncidentNotFoundError:
        message = missing(incident_id)
        return render(request, "error.html", 404, identity=identity, title="No such incident", message=message)
    csrf = csrf_token(state.csrf_key, identity.reviewer)
    tabs = heatmap_tabs(request, context["views"], probe)
    return render(request, "incident.html", identity=identity, csrf=csrf, done=done, error=error, **context, **tabs)


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
    except IncidentNotFoundError:
        return PlainTextResponse(missing(incident_id), status_code=404)
    except ReviewError as exc:
        return RedirectResponse(f"{target}?{urlencode({'error': str(exc)})}#actions", 303)
    return RedirectResponse(f"{target}?{urlencode({'done': action})}#actions", 303)


@router.get("/api/incidents/{incident_id}")
def incident_api(incident_id: int, state: State):
    try:
        incident = state.store.get(known_id(incident_id))
    except IncidentNotFoundError:
        return JSONResponse({"error": missing(incident_id)}, status_code=404)
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
    except IncidentNotFoundError:
        return JSONResponse({"error": missing(incident_id)}, status_code=404)
    except ReviewConflictError as exc:
        return JSONResponse({"error": str(exc)}, status_code=409)
    except ReviewError as exc:
        return JSONResponse({"error": str(exc)}, status_code=400)
    return incident_json(state, incident_id, incident)


@router.get("/probes/{probe_id}/quality", response_class=HTMLResponse)
def quality_page(request: Request, probe_id: str, identity: Reviewer):
    section = quality_section(probe_id)
    if section is None:
        message = f"no quality report section for probe {probe_id[:80]!r} is installed with this review app"
        return render(request, "error.html", 404, identity=identity, title="No quality report", message=message)
    return render(request, "quality.html", identity=identity, probe=probe_id, section=section)
