"""Reviewed incidents as training data: dialogue JSONL (docs/architecture.md, "Dialogue JSONL").

A true positive becomes a positive example (label 1) and a false positive a hard negative
(label 0) for the behaviour of the probe that flagged it; `unsure` is not exported. Each line
carries its provenance in `meta` (incident id, generation id, probe id, behaviour, bundle
version, model fingerprint, verdict, reviewer, score and threshold), `group` keeps a generation
on one side of a grouped split, and `kind` is `reviewed` (held out as its own kind in training).

The messages are recovered from the stored prompt with the model's own chat template
(`probewatch.data.unrender`) and the response becomes the final assistant message, so the
dialogue renders to the tokens the probe scored live. Incidents that cannot become such a
dialogue are skipped and counted by reason: no text stored (`--store-text none`), another model
than the tokenizer's, or a prompt the template does not reproduce exactly.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probewatch.data.dialogue import Dialogue, Message
from probewatch.data.unrender import messages_from_prompt
from probewatch.server.store.connect import open_private
from probewatch.server.store.records import Incident

LABEL_VALUES = {"true_positive": 1, "false_positive": 0}
EXPORT_KIND = "reviewed"


@dataclass
class ExportSummary:
    out: str
    written: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # verdict -> lines written
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> incidents not written

    def to_json(self) -> dict[str, Any]:
        return {"out": self.out, "written": self.written, "labels": self.labels, "skipped": self.skipped}


def incident_dialogue(incident: Incident, tokenizer: Any) -> tuple[Dialogue | None, str | None]:
    """(the dialogue, None) or (None, why it cannot be one)."""
    if incident.label not in LABEL_VALUES:
        return None, "not true/false positive"
    if not incident.prompt or incident.response is None:
        return None, "no text stored"
    messages = messages_from_prompt(tokenizer, incident.prompt)
    if messages is None:
        return None, "prompt not reproducible by the chat template"
    meta = {
        "source": "probewatch-review",
        "incident_id": incident.id,
        "generation_id": incident.generation_id,
        "probe": incident.probe,
        "behaviour": incident.behaviour,
        "bundle_version": incident.bundle_version,
        "model_fingerprint": incident.model_fingerprint,
        "verdict": incident.label,
        "reviewer": incident.labelled_by,
        "labelled_at": incident.labelled_at,
        "score": incident.score,
        "threshold": incident.threshold,
    }
    dialogue = Dialogue(
        [Message(m["role"], m["content"]) for m in messages] + [Message("assistant", incident.response)],
        label=LABEL_VALUES[incident.label],
        group=f"incident:{incident.generation_id}",
        kind=EXPORT_KIND,
        meta=meta,
    )
    return dialogue, None


def export_labelled(
    incidents: list[Incident], out: str | Path, tokenizer: Any, fingerprint: str | None = None
) -> ExportSummary:
    """Write the true/false positives among `incidents` to `out` (JSONL); `fingerprint`: only that model's."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = ExportSummary(str(out))
    labels: Counter[str] = Counter()
    skipped: Counter[str] = Counter()
    tmp = out.with_name(out.name + ".tmp")
    with open_private(tmp) as fh:  # 0600 like the store: reviewed text (issue 20, item 9)
        for incident in incidents:
            if fingerprint is not None and incident.model_fingerprint != fingerprint:
                skipped["another model"] += 1
                continue
            dialogue, why = incident_dialogue(incident, tokenizer)
            if dialogue is None:
                skipped[why or "?"] += 1
                continue
            fh.write(json.dumps(dialogue.to_json(), ensure_ascii=False) + "\n")
            labels[str(incident.label)] += 1
    tmp.replace(out)
    summary.labels, summary.skipped = dict(labels), dict(skipped)
    summary.written = sum(labels.values())
    return summary
