"""Review actions on many incidents at once (the queue's bulk form, a generation's "same for all",
"save & next"): the same rules and audit entries as one action at a time, in a constant number of
statements.

One action over N incidents is one transaction: lock the rows (`SELECT ... FOR UPDATE ... WHERE id
IN`), decide each row with the single action's rule (`review.py`'s deciders), one UPDATE per
distinct set of column updates and one multi-row INSERT of audit entries. A row the rule refuses is
reported and left untouched; the others still change. 50 generations (~150 incidents, label then
resolve) were ~300 one-row transactions, 0.5 s on PostgreSQL over loopback; now they are two.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import insert, select, update

from probewatch.server.store.queue import now_iso
from probewatch.server.store.records import LABELS, ReviewError
from probewatch.server.store.review import (
    MAX_REVIEWER_CHARS,
    ReviewActions,
    _comment,
    _reviewer,
    assign_decider,
    label_decider,
    resolve_decision,
)
from probewatch.server.store.tables import incidents as t
from probewatch.server.store.tables import review_events as ev

#: the actions `act_on_many` runs set-wise
BULK_ACTIONS = ("label", "assign", "resolve")

Decide = Callable[[int, dict, str], dict]


def _decider(action: str, who: str, fields: dict[str, Any]) -> tuple[Decide, str | None]:
    """(the rule, the audit value) of one bulk action; ReviewError for bad fields (nothing is written)."""
    if action == "label":
        label = str(fields.get("label") or "")
        if label not in LABELS:
            raise ReviewError(f"label {label!r} not one of {', '.join(LABELS)}")
        return label_decider(label, who), label
    if action == "assign":
        to = str(fields.get("assignee") or "").strip()
        if not to:
            raise ReviewError("assign needs the name of a reviewer to assign to")
        if len(to) > MAX_REVIEWER_CHARS:
            raise ReviewError(f"assignee name longer than {MAX_REVIEWER_CHARS} characters")
        return assign_decider(to), to
    if action == "resolve":
        return resolve_decision, None
    raise ReviewError(f"{action!r} is not a bulk action; one of {', '.join(BULK_ACTIONS)}")


class BulkReviewActions(ReviewActions):
    """`act_on_many`: one review action over many incidents, set-wise."""

    def act_on_many(
        self, incident_ids: Sequence[int], reviewer: str, action: str, fields: dict[str, Any]
    ) -> tuple[list[int], dict[int, str]]:
        """Apply `action` to every incident it allows; (changed ids in order, {refused id: why}).
        Resolving an incident already resolved is skipped (neither changed nor refused, not audited)."""
        who = _reviewer(reviewer)
        comment = _comment(fields.get("comment") or None)
        decide, value = _decider(action, who, fields)
        ids = list(dict.fromkeys(int(i) for i in incident_ids))
        done: list[int] = []
        refused: dict[int, str] = {}
        if not ids:
            return done, refused
        with self._write() as conn:
            found = conn.execute(
                select(t.c.id, t.c.status, t.c.assignee, t.c.label).where(t.c.id.in_(ids)).with_for_update()
            ).mappings()
            rows = {int(r["id"]): dict(r) for r in found}
            now = now_iso()
            groups: dict[tuple, list[int]] = defaultdict(list)
            for incident_id in ids:
                row = rows.get(incident_id)
                if row is None:
                    refused[incident_id] = "no such incident"
                    continue
                if action == "resolve" and row["status"] == "resolved":
                    continue
                try:
                    updates = decide(incident_id, row, now)
                except ReviewError as exc:
                    refused[incident_id] = str(exc)
                    continue
                groups[tuple(sorted(updates.items()))].append(incident_id)
                done.append(incident_id)
            for key, members in groups.items():
                if key:
                    conn.execute(update(t).where(t.c.id.in_(members)).values(**dict(key), updated_at=now))
            if done:
                conn.execute(
                    insert(ev),
                    [
                        {
                            "incident_id": i,
                            "at": now,
                            "reviewer": who,
                            "action": action,
                            "value": value,
                            "comment": comment,
                        }
                        for i in done
                    ],
                )
        return done, refused
