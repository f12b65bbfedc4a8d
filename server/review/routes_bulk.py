"""Bulk review: the queue's selected generations labelled, assigned and/or resolved in one post.

    POST /bulk        the queue page's bulk form (CSRF-checked): `generation` (repeated: the checked
                      rows), `label`, `assignee`, `resolve`, and `queue` (the queue's query string)
    POST /api/bulk    JSON {"generation_ids": [...]} or {"incident_ids": [...]}, "label", "assignee",
                      "resolve": bool, "comment"

A selected generation stands for its incidents *that the queue's filters select* (a queue filtered
to one probe labels that probe's incidents, not its twins'); the JSON API takes incident ids for
exact control. Each incident is one audited action per step, as if done by hand; a refusal (e.g.
resolving one without a verdict) skips that incident and is reported, the others go through.
"""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse

from probewatch.server.review.actions import act_many
from probewatch.server.review.auth import csrf_ok
from probewatch.server.review.routes_generation import carried_query, review_steps
from probewatch.server.review.routes_incident import json_object
from probewatch.server.review.state import Reviewer, State, base, current_identity
from probewatch.server.store.records import LABELS

router = APIRouter(dependencies=[Depends(current_identity)])
MAX_BULK = 1000  # generations or incidents per post


async def bulk_form(request: Request) -> dict[str, Any]:
    """The bulk form's fields, `generation` as the list of checked rows."""
    form = await request.form()
    fields: dict[str, Any] = {k: v for k, v in form.items() if isinstance(v, str)}
    fields["generation"] = [v for v in form.getlist("generation") if isinstance(v, str)]
    return fields


def _problem(label: str | None, assignee: str | None, resolve: bool, count: int) -> str | None:
    if label and label not in LABELS:
        return f"label {label[:40]!r} not one of {', '.join(LABELS)}"
    if not (label or assignee or resolve):
        return "choose a verdict, an assignee or resolve"
    if count == 0:
        return "no rows selected"
    if count > MAX_BULK:
        return f"{count} rows selected: at most {MAX_BULK} per action"
    return None


@router.post("/bulk")
def bulk(request: Request, identity: Reviewer, state: State, fields: Annotated[dict[str, Any], Depends(bulk_form)]):
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, fields.get("csrf")):
        return PlainTextResponse("form expired or forged (CSRF token mismatch): reload the page", status_code=403)
    queue = str(fields.get("queue") or "")
    target = f"{base(request)}/?{queue}{'&' if queue else ''}"
    label = str(fields.get("label") or "") or None
    assignee = str(fields.get("assignee") or "").strip() or None
    resolve = bool(fields.get("resolve"))
    generations = list(dict.fromkeys(fields["generation"]))
    problem = _problem(label, assignee, resolve, len(generations))
    if problem:
        return RedirectResponse(f"{target}{urlencode({'error': problem})}", 303)
    ids = state.store.incident_ids(carried_query(queue).flt, generations)
    batch = act_many(state, ids, identity.reviewer, review_steps(label, assignee, resolve, None))
    key = "error" if batch.errors else "done"
    return RedirectResponse(f"{target}{urlencode({key: f'{len(generations)} generation(s): {batch.summary()}'})}", 303)


@router.post("/api/bulk")
def bulk_api(
    identity: Reviewer,
    state: State,
    body: Annotated[dict[str, Any], Depends(json_object)],
    x_csrf_token: Annotated[str | None, Header()] = None,
):
    if identity.cookie and not csrf_ok(state.csrf_key, identity.reviewer, x_csrf_token):
        return JSONResponse({"error": "CSRF token missing or wrong (X-CSRF-Token)"}, status_code=403)
    generations, incidents = body.get("generation_ids"), body.get("incident_ids")
    if (generations is None) == (incidents is None):
        return JSONResponse({"error": "give exactly one of generation_ids and incident_ids"}, status_code=400)
    items = generations if generations is not None else incidents
    if not isinstance(items, list) or not all(isinstance(x, str if generations is not None else int) for x in items):
        kind = "strings" if generations is not None else "integers"
        return JSONResponse({"error": f"the ids must be a list of {kind}"}, status_code=400)
    label = str(body.get("label") or "") or None
    assignee = str(body.get("assignee") or "").strip() or None
    resolve = bool(body.get("resolve"))
    problem = _problem(label, assignee, resolve, len(items))
    if problem:
        return JSONResponse({"error": problem}, status_code=400)
    ids = state.store.incident_ids(None, items) if generations is not None else list(dict.fromkeys(items))
    comment = str(body.get("comment") or "") or None
    return act_many(state, ids, identity.reviewer, review_steps(label, assignee, resolve, comment)).to_json()
