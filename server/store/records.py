"""What the incident store holds, as Python values: incidents, review events, queue rows, errors.

An incident is one (generation, probe) whose aggregate crossed the probe's threshold (priority
`normal`), or ended inside the probe's uncertainty band just below it (priority `low`: recorded for
review, never alerted; docs/architecture.md "Probe bundle", `threshold.uncertain_from`). Review
state (who claimed it, the verdict, the severity, when it was resolved) lives on the incident;
every review action is also appended to an audit trail of `ReviewEvent`s (reviewer and time).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from probewatch.errors import ProbewatchError

#: review status of an incident: open (nobody on it) -> acknowledged (claimed) -> resolved
STATUSES = ("open", "acknowledged", "resolved")
#: how the generation behind an incident ended (open: still running when the row was last written;
#: interrupted: the sidecar that wrote it stopped before the generation ended)
GENERATION_STATUSES = ("open", "closed", "aborted", "interrupted")
#: a reviewer's verdict; true_positive / false_positive flow back into training (`incidents export`)
LABELS = ("true_positive", "false_positive", "unsure")
SEVERITIES = ("low", "medium", "high", "critical")
#: how urgently an incident wants review, lowest first: `low` = an uncertain result (in a probe's band, below
#: its threshold: no alert was raised), `normal` = an alert
PRIORITIES = ("low", "normal")
#: what the audit trail records
ACTIONS = ("claim", "unclaim", "assign", "label", "severity", "comment", "resolve", "reopen", "status")


class IncidentStoreError(ProbewatchError):
    """The incident store cannot be opened or written."""


class IncidentNotFoundError(ProbewatchError):
    """No incident with that id."""


class ReviewError(ProbewatchError):
    """A review action that cannot be applied as asked (bad value, claimed by someone else)."""


class ReviewConflictError(ReviewError):
    """The incident is claimed by another reviewer (take it over explicitly)."""


@dataclass
class Incident:
    generation_id: str
    probe: str
    behaviour: str
    score: float
    threshold: float
    model_fingerprint: str
    bundle_version: str
    aggregation: str = ""
    token_scores: list[list[float]] = field(default_factory=list)  # [[position, score], ...] selected tokens
    prompt: str | None = None
    response: str | None = None
    generation_status: str = "closed"
    early: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = "open"
    priority: str = "normal"  # PRIORITIES: `low` for an uncertain result (no alert)
    id: int | None = None
    created_at: str = ""
    updated_at: str = ""
    note: str = ""
    # review state (set by review actions, never by the sidecar)
    label: str | None = None
    severity: str | None = None
    assignee: str | None = None
    labelled_by: str | None = None
    labelled_at: str | None = None
    resolved_at: str | None = None
    # the generation this incident belongs to (one row per generation, shared by its incidents):
    # prompt length, [[position, token id], ...] of the scored tokens, and every probe's result
    prompt_length: int | None = None
    tokens: list[list[int]] = field(default_factory=list)
    # [[position, token text], ...]: as the client sent them when written (the store applies the text
    # policy), as stored when read; `text_policy`: the --store-text mode they were kept under (None: unknown)
    token_texts: list[list[Any]] = field(default_factory=list)
    text_policy: str | None = None
    context: dict[str, Any] = field(default_factory=dict)
    generation_updated_at: str | None = None  # when the generation's row was last written (its close)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def probe_context(
    *,
    behaviour: str,
    score: float | None,
    threshold: float,
    n_tokens: int,
    aggregation: str,
    token_selection: str,
    layer: int,
    version: str,
    token_scores: list[list[float]],
    uncertain_from: float | None = None,
    answer_option: str | None = None,
) -> dict[str, Any]:
    """One probe's entry in `Incident.context`: its result on the generation, as the review app reads it
    (heatmap, "other probes"). `score` None = the probe scored no token; such a probe is not flagged.
    `uncertain_from`: the lower edge of the probe's uncertainty band (None: it has none). `answer_option`: the
    letter of the prompt's option a token selection `answer` probe read (its `token_scores` are that option's
    tokens); None where it read the reply, and for every other probe."""
    flagged = score is not None and score >= threshold
    return {
        "behaviour": behaviour,
        "score": score,
        "threshold": threshold,
        "flagged": flagged,
        "uncertain": not flagged and score is not None and uncertain_from is not None and score >= uncertain_from,
        "uncertain_from": uncertain_from,
        "n_tokens": n_tokens,
        "aggregation": aggregation,
        "token_selection": token_selection,
        "layer": layer,
        "version": version,
        "token_scores": token_scores,
        "answer_option": answer_option,
    }


@dataclass
class ReviewEvent:
    """One entry of an incident's audit trail."""

    id: int
    incident_id: int
    at: str
    reviewer: str
    action: str
    value: str | None = None
    comment: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
