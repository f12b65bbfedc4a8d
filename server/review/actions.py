"""The review actions a reviewer can take on an incident: the one service layer behind the page's
forms, the JSON API and `probewatch incidents label|ack|resolve|reopen`.

`apply` validates and applies one to the store (the store's review mixin enforces the rules, e.g.
"label it before resolving", and writes the audit entry in the same transaction); `act` is the web
app's wrapper that also counts it in the review metrics and refreshes what depends on it (the
metrics cache, the filter menus). `fields` are the form fields, the JSON body or the CLI's flags.
`act_many` runs steps (label, assign, resolve) over many incidents for the bulk actions, the
generation page's "same for all" and "save & next": still one audited action per incident, and a
refusal of one incident does not stop the others.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from probewatch.server.store import IncidentStore
from probewatch.server.store.records import Incident, IncidentNotFoundError, ReviewError
from probewatch.server.store.review_bulk import BULK_ACTIONS

if TYPE_CHECKING:  # the CLI calls `apply` without the web app's dependencies
    from probewatch.server.review.state import ReviewState

ACTIONS = ("claim", "takeover", "unclaim", "assign", "label", "severity", "comment", "resolve", "reopen")

Action = Callable[[IncidentStore, int, str, dict[str, Any], str | None], Incident]

_APPLY: dict[str, Action] = {
    "claim": lambda s, i, who, f, _: s.claim(i, who, force=bool(f.get("force"))),
    "takeover": lambda s, i, who, f, _: s.claim(i, who, force=True),
    "unclaim": lambda s, i, who, f, _: s.unclaim(i, who),
    "assign": lambda s, i, who, f, comment: s.assign(i, who, str(f.get("assignee") or ""), comment=comment),
    "label": lambda s, i, who, f, comment: s.label(i, who, str(f.get("label") or ""), comment=comment),
    "severity": lambda s, i, who, f, _: s.set_severity(i, who, f.get("severity") or None),
    "comment": lambda s, i, who, f, comment: s.comment(i, who, str(comment or "")),
    "resolve": lambda s, i, who, f, comment: s.resolve(i, who, comment=comment),
    "reopen": lambda s, i, who, f, comment: s.reopen(i, who, comment=comment),
}


def apply(store: IncidentStore, incident_id: int, reviewer: str, action: str, fields: dict[str, Any]) -> Incident:
    """Apply `action` (one of ACTIONS) to `store`; ReviewError for an unknown one or one the store refuses."""
    run = _APPLY.get(action)
    if run is None:
        raise ReviewError(f"unknown action {action!r}; one of {', '.join(ACTIONS)}")
    return run(store, incident_id, reviewer, fields, fields.get("comment") or None)


def act(state: ReviewState, incident_id: int, reviewer: str, action: str, fields: dict[str, Any]) -> Incident:
    """`apply` for the web app: also counted in the review metrics, and the cached views refreshed."""
    result = apply(state.store, incident_id, reviewer, action, fields)
    state.action_counter.labels(action="claim" if action == "takeover" else action).inc()
    state.collector.invalidate()
    state.forget_facets()  # a new reviewer shows up in the reviewer menu at once
    return result


#: one step of `act_many`: (action, fields)
Step = tuple[str, dict[str, Any]]
_DONE = {"label": "labelled", "resolve": "resolved", "assign": "assigned", "claim": "claimed", "reopen": "reopened"}


@dataclass
class Batch:
    """What `act_many` did: incidents per action, and each refusal as "#id: why"."""

    done: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{_DONE.get(a, a)} {n}" for a, n in self.done.items()]
        text = ", ".join(parts) or "nothing changed"
        return text + (f"; {len(self.errors)} refused ({self.errors[0]})" if self.errors else "")

    def to_json(self) -> dict[str, Any]:
        return {"done": dict(self.done), "errors": self.errors, "summary": self.summary()}


def act_many(state: ReviewState, incident_ids: Sequence[int], reviewer: str, steps: Sequence[Step]) -> Batch:
    """Each step on each incident in turn (one audited action each); an incident a step refuses skips
    its later steps; resolving one already resolved is skipped, not re-audited. Label / assign /
    resolve run set-wise (`IncidentStore.act_on_many`: a few statements per step, whatever the count);
    anything else runs per incident inside one store transaction (a savepoint per action)."""
    batch = Batch()
    if all(action in BULK_ACTIONS for action, _ in steps):
        alive = list(dict.fromkeys(int(i) for i in incident_ids))
        for action, fields in steps:
            try:
                done, refused = state.store.act_on_many(alive, reviewer, action, fields)
            except ReviewError as exc:  # the step itself is invalid (e.g. an unknown label): nobody gets it
                batch.errors += [f"#{i}: {exc}" for i in alive]
                break
            if done:
                batch.done[action] += len(done)
                state.action_counter.labels(action=action).inc(len(done))
            batch.errors += [f"#{i}: {why}" for i, why in refused.items()]
            alive = [i for i in alive if i not in refused]
        state.collector.invalidate()
        state.forget_facets()
        return batch
    with state.store.batch():
        for incident_id in incident_ids:
            _steps(state, incident_id, reviewer, steps, batch)
    return batch


def _steps(state: ReviewState, incident_id: int, reviewer: str, steps: Sequence[Step], batch: Batch) -> None:
    """`steps` on one incident: a refusal is recorded in `batch` and skips the later steps."""
    current: Incident | None = None
    for action, fields in steps:
        try:
            if action == "resolve":
                current = current or state.store.get(incident_id)
                if current.status == "resolved":
                    continue
            current = act(state, incident_id, reviewer, action, fields)
        except IncidentNotFoundError:  # the store's message names where it lives: not for a page
            batch.errors.append(f"#{incident_id}: no such incident")
            return
        except ReviewError as exc:
            batch.errors.append(f"#{incident_id}: {exc}")
            return
        batch.done[action] += 1
