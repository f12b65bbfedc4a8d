"""The review actions a reviewer can take on an incident, from the page's forms and from the JSON API.

`act` applies one to the store, counts it in the review metrics and refreshes what depends on it
(the metrics cache, the filter menus). `fields` are the form fields or the JSON body.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from probewatch.server.review.state import ReviewState
from probewatch.server.store import IncidentStore
from probewatch.server.store.records import Incident, ReviewError

ACTIONS = ("claim", "takeover", "unclaim", "label", "severity", "comment", "resolve", "reopen")

Action = Callable[[IncidentStore, int, str, dict[str, Any], str | None], Incident]

_APPLY: dict[str, Action] = {
    "claim": lambda s, i, who, f, _: s.claim(i, who, force=bool(f.get("force"))),
    "takeover": lambda s, i, who, f, _: s.claim(i, who, force=True),
    "unclaim": lambda s, i, who, f, _: s.unclaim(i, who),
    "label": lambda s, i, who, f, comment: s.label(i, who, str(f.get("label") or ""), comment=comment),
    "severity": lambda s, i, who, f, _: s.set_severity(i, who, f.get("severity") or None),
    "comment": lambda s, i, who, f, comment: s.comment(i, who, str(comment or "")),
    "resolve": lambda s, i, who, f, comment: s.resolve(i, who, comment=comment),
    "reopen": lambda s, i, who, f, comment: s.reopen(i, who, comment=comment),
}


def act(state: ReviewState, incident_id: int, reviewer: str, action: str, fields: dict[str, Any]) -> Incident:
    """Apply `action` (one of ACTIONS); ReviewError for an unknown one or one the store refuses."""
    apply = _APPLY.get(action)
    if apply is None:
        raise ReviewError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    result = apply(state.store, incident_id, reviewer, fields, fields.get("comment") or None)
    state.action_counter.labels(action="claim" if action == "takeover" else action).inc()
    state.collector.invalidate()
    state.forget_facets()  # a new reviewer shows up in the reviewer menu at once
    return result
