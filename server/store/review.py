"""The review workflow's client: claim, label, set severity, comment, resolve, reopen, set the status,
read the audit trail. Each action is one transaction: the change and its audit entry commit together,
on a row locked for the decision (`SELECT ... FOR UPDATE` on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import insert, select, update

from probewatch.server.store.queries import IncidentQueries
from probewatch.server.store.queue import now_iso
from probewatch.server.store.records import (
    LABELS,
    SEVERITIES,
    STATUSES,
    Incident,
    IncidentNotFoundError,
    ReviewConflictError,
    ReviewError,
    ReviewEvent,
)
from probewatch.server.store.tables import incidents as t
from probewatch.server.store.tables import review_events as ev

MAX_REVIEWER_CHARS = 200
MAX_COMMENT_CHARS = 10_000

#: `decide(row, now)`: validate the locked row (status, assignee, label) and return the column updates
Decide = Callable[[dict, str], dict]


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ReviewError("a review action needs a reviewer identity")
    if len(name) > MAX_REVIEWER_CHARS:
        raise ReviewError(f"reviewer identity longer than {MAX_REVIEWER_CHARS} characters")
    return name


def _comment(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if len(text) > MAX_COMMENT_CHARS:
        raise ReviewError(f"comment of {len(text)} characters is over the {MAX_COMMENT_CHARS}-character limit")
    return text.strip()


def _require_label(row: dict, incident_id: int) -> None:
    """The one "no verdict, no resolve" rule, for the web app and the CLI alike (resolve and set_status)."""
    if row["label"] is None:
        raise ReviewError(f"incident {incident_id} has no label: label it before resolving")


def label_decider(label: str, who: str) -> Callable[[int, dict, str], dict]:
    """The verdict's column updates; an unclaimed incident is claimed by the labeller, an open one acknowledged."""

    def decide(incident_id: int, row: dict, now: str) -> dict:
        updates = {"label": label, "labelled_by": who, "labelled_at": now}
        if row["assignee"] is None:
            updates["assignee"] = who
        if row["status"] == "open":
            updates["status"] = "acknowledged"
        return updates

    return decide


def assign_decider(to: str) -> Callable[[int, dict, str], dict]:
    def decide(incident_id: int, row: dict, now: str) -> dict:
        if row["status"] == "resolved":
            raise ReviewError(f"incident {incident_id} is resolved; reopen it first")
        return {"assignee": to, "status": "acknowledged"}

    return decide


def resolve_decision(incident_id: int, row: dict, now: str) -> dict:
    _require_label(row, incident_id)
    return {"status": "resolved", "resolved_at": now}


class ReviewActions(IncidentQueries):
    """Review actions; each returns the incident as it is after the action (through `get`)."""

    def _act(
        self,
        incident_id: int,
        reviewer: str,
        action: str,
        decide: Decide,
        value: str | None = None,
        comment: str | None = None,
    ) -> Incident:
        """Lock the row, let `decide(row)` validate and return the column updates, write both."""
        reviewer = _reviewer(reviewer)
        comment = _comment(comment)
        with self._write() as conn:
            row = (
                conn.execute(
                    select(t.c.id, t.c.status, t.c.assignee, t.c.label)
                    .where(t.c.id == int(incident_id))
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            if row is None:
                raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.location.display}")
            now = now_iso()
            updates = decide(dict(row), now)
            if updates:
                conn.execute(update(t).where(t.c.id == int(incident_id)).values(**updates, updated_at=now))
            conn.execute(
                insert(ev).values(
                    incident_id=int(incident_id), at=now, reviewer=reviewer, action=action, value=value, comment=comment
                )
            )
        return self.get(incident_id)

    def claim(self, incident_id: int, reviewer: str, force: bool = False) -> Incident:
        """Take an incident (open -> acknowledged); one claimed by someone else needs force=True."""
        who = _reviewer(reviewer)

        def decide(row: dict, now: str) -> dict:
            if row["status"] == "resolved":
                raise ReviewError(f"incident {incident_id} is resolved; reopen it first")
            if row["assignee"] not in (None, who) and not force:
                raise ReviewConflictError(
                    f"incident {incident_id} is claimed by {row['assignee']}; take it over explicitly"
                )
            return {"assignee": who, "status": "acknowledged"}

        return self._act(incident_id, who, "claim", decide)

    def unclaim(self, incident_id: int, reviewer: str) -> Incident:
        """Give an incident back to the queue (acknowledged -> open)."""
        who = _reviewer(reviewer)

        def decide(row: dict, now: str) -> dict:
            if row["assignee"] not in (None, who):
                raise ReviewConflictError(f"incident {incident_id} is claimed by {row['assignee']}, not {who}")
            return {"assignee": None, "status": "open" if row["status"] == "acknowledged" else row["status"]}

        return self._act(incident_id, who, "unclaim", decide)

    def label(self, incident_id: int, reviewer: str, label: str, comment: str | None = None) -> Incident:
        """Record the verdict (true_positive / false_positive / unsure); an unclaimed incident is claimed too."""
        if label not in LABELS:
            raise ReviewError(f"label {label!r} not one of {', '.join(LABELS)}")
        who = _reviewer(reviewer)
        decide = label_decider(label, who)
        return self._act(incident_id, who, "label", lambda row, now: decide(incident_id, row, now), label, comment)

    def assign(self, incident_id: int, reviewer: str, assignee: str, comment: str | None = None) -> Incident:
        """Hand an incident to `assignee` (anyone, the reviewer included; open -> acknowledged), taking it
        from whoever held it: an explicit hand-over, audited with the new assignee as the value."""
        who, to = _reviewer(reviewer), (assignee or "").strip()
        if not to:
            raise ReviewError("assign needs the name of a reviewer to assign to")
        if len(to) > MAX_REVIEWER_CHARS:
            raise ReviewError(f"assignee name longer than {MAX_REVIEWER_CHARS} characters")

        decide = assign_decider(to)
        return self._act(incident_id, who, "assign", lambda row, now: decide(incident_id, row, now), to, comment)

    def set_severity(self, incident_id: int, reviewer: str, severity: str | None) -> Incident:
        severity = severity or None
        if severity is not None and severity not in SEVERITIES:
            raise ReviewError(f"severity {severity!r} not one of {', '.join(SEVERITIES)}")
        return self._act(incident_id, reviewer, "severity", lambda row, now: {"severity": severity}, value=severity)

    def comment(self, incident_id: int, reviewer: str, text: str) -> Incident:
        if _comment(text) is None:
            raise ReviewError("empty comment")
        return self._act(incident_id, reviewer, "comment", lambda row, now: {}, comment=text)

    def resolve(self, incident_id: int, reviewer: str, comment: str | None = None) -> Incident:
        """Close the review; the incident must carry a verdict first (it feeds precision and training)."""
        return self._act(
            incident_id, reviewer, "resolve", lambda row, now: resolve_decision(incident_id, row, now), None, comment
        )

    def reopen(self, incident_id: int, reviewer: str, comment: str | None = None) -> Incident:
        def decide(row: dict, now: str) -> dict:
            return {"status": "acknowledged" if row["assignee"] else "open", "resolved_at": None}

        return self._act(incident_id, reviewer, "reopen", decide, comment=comment)

    def set_status(self, incident_id: int, status: str, note: str | None = None, reviewer: str = "cli") -> Incident:
        """Set the review status directly, audited like the rest; resolving still needs a verdict.
        (The CLI goes through `probewatch.server.review.actions.apply`, as the web app does.)"""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not one of {STATUSES}")

        def decide(row: dict, now: str) -> dict:
            if status == "resolved":
                _require_label(row, incident_id)
            updates: dict[str, Any] = {"status": status, "resolved_at": now if status == "resolved" else None}
            if note is not None:
                updates["note"] = note
            return updates

        return self._act(incident_id, reviewer, "status", decide, value=status, comment=note)

    def events(self, incident_id: int) -> list[ReviewEvent]:
        """The audit trail of one incident, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(ev).where(ev.c.incident_id == int(incident_id)).order_by(ev.c.id)).mappings()
            return [ReviewEvent(**dict(r)) for r in rows]
