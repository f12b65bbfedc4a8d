"""One flagged generation, the unit of review: every probe that alerted on it, reviewed in one post.

    GET  /generations/{gid}          the conversation, every probe's heatmap, a verdict per probe with
                                     "same for all", assign to, save / save & resolve / save & next
    POST /generations/{gid}          that form (CSRF-checked): verdicts, assignment and resolve in one
                                     post (one audited action per incident), then back to the page or,
                                     for "save & next", on to the next generation of the same queue
    GET  /api/generations/{gid}      the generation's incidents and their audit trails as JSON
    POST /api/generations/{gid}      the same review as JSON: {"label": verdict for all, "labels":
                                     {probe: verdict}, "assignee", "resolve", "comment"}

The page carries the queue's query string (`queue`), so "save & next" moves through the queue the
reviewer was looking at: same filters, same sort. The per-incident pages (/incidents/{id}) stay,
for one probe's timeline, severity and comments, and for links already sent out.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse

from probewatch.server.review import grafana
from probewatch.server.review.actions import Batch, Step, act_many
from probewatch.server.review.auth import csrf_ok, csrf_token
from probewatch.server.review.probe_card import probe_card, quality_section
from probewatch.server.review.routes_incident import form_fields, heatmap_tabs, incident_context, json_object
from probewatch.server.review.routes_queue import QueueQuery, generation_link, queue_query
from probewatch.server.review.state import Reviewer, ReviewState, State, base, current_identity, render
from probewatch.server.review.view import TimelineEntry, timeline
from probewatch.server.store.records import LABELS, Incident

router = APIRouter(dependencies=[Depends(current_identity)])
SAVE_MODES = ("save", "resolve", "next")


def carried_query(text: str | None) -> QueueQuery:
    """The queue (filters, sort) a carried query string names; its errors fall back to the whole queue."""
    known = set(inspect.signature(queue_query).parameters)
    params = {k: v for k, v in parse_qsl(text or "") if k in known}
    return queue_query(**params)


def review_steps(label: str | None, assignee: str | None, resolve: bool, comment: str | None) -> list[Step]:
    """The actions one review post asks for, in the order they must run (a verdict before resolving)."""
    steps: list[Step] = []
    if label:
        steps.append(("label", {"label": label, "comment": comment}))
    if assignee:
        steps.append(("assign", {"assignee": assignee}))
    if resolve:
        steps.append(("resolve", {}))
    return steps


def review_generation(
    state: ReviewState,
    incidents: list[Incident],
    reviewer: str,
    verdicts: dict[int, str],
    assignee: str | None,
    resolve: bool,
    comment: str | None,
) -> Batch:
    """Each incident's verdict (skipped when unchanged and no comment), the assignment, then resolve."""
    total = Batch()
    for incident in incidents:
        iid = int(incident.id or 0)
        label = verdicts.get(iid)
        if label == incident.label and not comment:
            label = None
        owner = assignee if assignee and assignee != incident.assignee else None
        batch = act_many(state, [iid], reviewer, review_steps(label, owner, resolve, comment))
        total.done.update(batch.done)
        total.errors.extend(batch.errors)
    return total


def _timeline(state: ReviewState, incidents: list[Incident]) -> list[TimelineEntry]:
    """Every incident's timeline in one, each entry naming its probe when the generation has several."""
    entries: list[TimelineEntry] = []
    for incident in incidents:
        for e in timeline(incident, state.store.events(int(incident.id or 0))):
            if len(incidents) > 1 and e.who:
                e.what = f"{incident.probe}: {e.what}"
            entries.append(e)
    unique = {(e.at, e.what, e.who, e.detail): e for e in entries}  # "generation closed" once
    return sorted(unique.values(), key=lambda e: e.at)


def generation_context(state: ReviewState, incidents: list[Incident], focus: str | None) -> dict[str, Any]:
    top = next((i for i in incidents if i.probe == focus), incidents[0])
    context = incident_context(state, int(top.id or 0))
    probes = [i.probe for i in incidents]
    dashboard = (
        grafana.incident_window_url(state.grafana_url, top.created_at, probes)
        if state.grafana_url and top.created_at
        else None
    )
    manifests = [state.catalog.manifest(i.probe, i.bundle_version, i.model_fingerprint) for i in incidents]
    return {
        **context,
        "incidents": incidents,
        "timeline": _timeline(state, incidents),
        "dashboard": dashboard,
        "cards": [probe_card(i.probe, i.behaviour, m) for i, m in zip(incidents, manifests)],
        "quality_reports": [quality_section(i.probe) is not None for i in incidents],
    }


def _verdicts(fields: dict[str, str], incidents: list[Incident]) -> dict[int, str]:
    same = fields.get("label_all") or ""
    out = {}
    for i in incidents:
        value = same or fields.get(f"label-{i.id}") or ""
        if value:
            out[int(i.id or 0)] = value
    return out


@router.get("/generations/{generation_id:path}", response_class=HTMLResponse)
def generation_page(
    request: Request,
    generation_id: str,
    identity: Reviewer,
    state: State,
    probe: str | None = None,
    done: str | None = None,
    error: str | None = None,
):
    incidents = state.store.generation_incidents(generation_id)
    if not incidents:
        message = f"no incidents for generation {generation_id[:200]!r}"
        return render(request, "error.html", 404, identity=identity, title="No such generation", message=message)
    queue = urlencode([(k, v) for k, v in request.query_params.multi_items() if k not in ("probe", "done", "error")])
    context = generation_context(state, incidents, probe)
    csrf = csrf_token(state.csrf_key, identity.reviewer)
    root = base(request)
    return render(
        request,
        "generation.html",
        identity=identity,
        csrf=csrf,
        done=done,
        error=error,
        queue=queue,
        queue_url=f"{root}/?{queue}" if queue else f"{root}/",
        reviewers=state.facets()["reviewer"],
        **context,
        **heatmap_tabs(request, context["views"], probe),
    )


@router.post("/generations/{generation_id:path}")
def generation_form(
    request: Request,
    generation_id: str,
    identity: Reviewer,
    state: State,
    fields: Annotated[dict[str, str], Depends(form_fields)],
):
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, fields.get("csrf")):
        return PlainTextResponse("form expired or forged (CSRF token mismatch): reload the page", status_code=403)
    incidents = state.store.generation_incidents(generation_id)
    if not incidents:
        return PlainTextResponse(f"no incidents for generation {generation_id[:200]!r}", status_code=404)
    root, queue = base(request), fields.get("queue", "")
    mode = fields.get("do") or "save"
    if mode not in SAVE_MODES:
        return PlainTextResponse(f"unknown save mode {mode[:40]!r}; one of {', '.join(SAVE_MODES)}", status_code=400)
    verdicts = _verdicts(fields, incidents)
    if any(v not in LABELS for v in verdicts.values()):
        return PlainTextResponse(f"a verdict is one of {', '.join(LABELS)}", status_code=400)
    carried = carried_query(queue)
    following = state.store.next_generation(carried.flt, carried.sort, generation_id) if mode == "next" else None
    batch = review_generation(
        state,
        incidents,
        identity.reviewer,
        verdicts,
        (fields.get("assignee") or "").strip() or None,
        mode != "save",
        fields.get("comment") or None,
    )
    here = generation_link(root, generation_id, queue)
    sep = "&" if queue else "?"
    if batch.errors:
        return RedirectResponse(f"{here}{sep}{urlencode({'error': batch.summary()})}#review", 303)
    if mode != "next":
        return RedirectResponse(f"{here}{sep}{urlencode({'done': batch.summary()})}#review", 303)
    if following is None:  # the queue is done: back to it, saying so
        done = urlencode({"done": f"{batch.summary()}; no more generations in this queue"})
        return RedirectResponse(f"{root}/?{queue}{'&' if queue else ''}{done}", 303)
    return RedirectResponse(
        f"{generation_link(root, following, queue)}{sep}{urlencode({'done': batch.summary()})}", 303
    )


def generation_json(state: ReviewState, incidents: list[Incident]) -> dict[str, Any]:
    return {
        "generation_id": incidents[0].generation_id,
        "incidents": [
            {**i.to_json(), "events": [e.to_json() for e in state.store.events(int(i.id or 0))]} for i in incidents
        ],
    }


@router.get("/api/generations/{generation_id:path}")
def generation_api(generation_id: str, state: State):
    incidents = state.store.generation_incidents(generation_id)
    if not incidents:
        return JSONResponse({"error": f"no incidents for generation {generation_id[:200]!r}"}, status_code=404)
    return generation_json(state, incidents)


@router.post("/api/generations/{generation_id:path}")
def generation_review_api(
    generation_id: str,
    identity: Reviewer,
    state: State,
    body: Annotated[dict[str, Any], Depends(json_object)],
    x_csrf_token: Annotated[str | None, Header()] = None,
):
    """{"label": for all, "labels": {probe: verdict}, "assignee", "resolve": bool, "comment"} -> the
    generation and `batch` (what was done; `errors` lists refusals, e.g. resolving an unlabelled one)."""
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, x_csrf_token):
        return JSONResponse({"error": "CSRF token missing or wrong (X-CSRF-Token)"}, status_code=403)
    incidents = state.store.generation_incidents(generation_id)
    if not incidents:
        return JSONResponse({"error": f"no incidents for generation {generation_id[:200]!r}"}, status_code=404)
    labels = body.get("labels") or {}
    if not isinstance(labels, dict):
        return JSONResponse({"error": "labels must be an object {probe: verdict}"}, status_code=400)
    fields = {"label_all": body.get("label") or ""}
    by_probe = {i.probe: i for i in incidents}
    for probe, verdict in labels.items():
        if probe not in by_probe:
            return JSONResponse({"error": f"probe {str(probe)[:80]!r} has no incident here"}, status_code=400)
        fields[f"label-{by_probe[probe].id}"] = verdict
    verdicts = _verdicts({k: str(v) for k, v in fields.items()}, incidents)
    if any(v not in LABELS for v in verdicts.values()):
        return JSONResponse({"error": f"a verdict is one of {', '.join(LABELS)}"}, status_code=400)
    assignee = str(body.get("assignee") or "").strip() or None
    comment = str(body.get("comment") or "") or None
    batch = review_generation(
        state, incidents, identity.reviewer, verdicts, assignee, bool(body.get("resolve")), comment
    )
    after = state.store.generation_incidents(generation_id)
    return {**generation_json(state, after), "batch": batch.to_json()}
