"""What `probewatch incidents list|show` print for a person (the `--json` forms are for programs).

The list keeps ids, scores and status whole at any width (they are what `show`, `label` and
`--probe` need) and folds the response; `show` prints the conversation as turns ("user: ..."),
numbers to four significant digits, and the highest-scoring tokens with their text, using the
review app's own view model (`probewatch.server.review.view`) so both read an incident alike.
Text from clients is printed as text, never as rich markup.
"""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console
from rich.text import Text

from probewatch import tables
from probewatch.server.store.records import Incident, ReviewEvent

#: chat templates recognised without a tokenizer: (turn pattern, role group, content group)
_TURNS = (
    re.compile(r"<\|im_start\|>(\w+)\n(.*?)(?:<\|im_end\|>\n?|\Z)", re.S),  # ChatML (SmolLM2, Qwen)
    re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|\Z)", re.S),  # Llama 3
    re.compile(r"<start_of_turn>(\w+)\n(.*?)(?:<end_of_turn>\n?|\Z)", re.S),  # Gemma
)


def list_table(rows: list[Incident], title: str, width: int = 80):
    """`incidents list`: id, time, probe, score, threshold, status whole; the response folds. The
    generation id (long: a request id) gets a column from 110 columns up; `--json` always has it."""
    wide = width >= 110
    t = tables.table(title)
    tables.key(t, "id", [str(r.id) for r in rows], justify="right")
    tables.key(t, "time (UTC)", [_when(r.created_at) for r in rows])
    tables.key(t, "probe", [r.probe for r in rows])
    tables.key(t, "score", [f"{r.score:+.2f}" for r in rows], justify="right")
    tables.key(t, "thr", [f"{r.threshold:+.2f}" for r in rows], justify="right")
    tables.key(t, "status", [r.status for r in rows])
    tables.key(t, "prio", [r.priority for r in rows])
    if wide:
        tables.text(t, "generation", ratio=1)
    tables.text(t, "response", ratio=3)
    for r in rows:
        cells: list[str | Text] = [str(r.id), _when(r.created_at), r.probe, f"{r.score:+.2f}", f"{r.threshold:+.2f}"]
        cells += [r.status, Text(r.priority, style="yellow" if r.priority == "low" else "")]
        cells += [Text(r.generation_id)] if wide else []
        t.add_row(*cells, Text(tables.preview(r.response)))
    return t


def _score_line(incident: Incident, f) -> str:
    """The score against the threshold: at or above it for an alert, below it for an uncertain result."""
    how = incident.aggregation or "aggregate"
    if incident.priority == "low":
        return f"{f(incident.score)} < threshold {f(incident.threshold)} ({how}; inside the uncertainty band)"
    return f"{f(incident.score)} ≥ threshold {f(incident.threshold)} ({how})"


def _when(iso: str) -> str:
    """`2026-12-03T10:22:01.123+00:00` -> `12-03 10:22` (the year and seconds rarely matter in a queue)."""
    return iso[5:16].replace("T", " ") if len(iso) >= 16 else iso


def turns(prompt: str) -> list[tuple[str, str]]:
    """The prompt's chat turns for a known template (the empty generation prompt left out), or one "prompt" turn."""
    for pattern in _TURNS:
        found = [(role, content.strip("\n")) for role, content in pattern.findall(prompt)]
        if found:
            if found[-1][0] in ("assistant", "model") and not found[-1][1].strip():
                found.pop()
            return found
    return [("prompt", prompt)]


def print_incident(
    c: Console, incident: Incident, events: list[ReviewEvent], tokenizer: Any = None, top: int = 20
) -> None:
    """`incidents show` for a person."""
    from probewatch.server.review.view import conversation, probe_views

    f = tables.fmt
    when = incident.created_at[:19].replace("T", " ")
    c.print(Text.assemble((f"incident {incident.id}", "bold"), f"  {incident.status}  {when} UTC"))
    early = "; alert raised while generating" if incident.early else ""
    review = [
        f"verdict {incident.label.replace('_', ' ')} by {incident.labelled_by}" if incident.label else "no verdict yet",
        f"severity {incident.severity}" if incident.severity else "",
        f"claimed by {incident.assignee}" if incident.assignee else "",
    ]
    fields = (
        ("probe", f"{incident.probe} ({incident.behaviour.replace('_', ' ')})"),
        ("score", _score_line(incident, f)),
        (
            "priority",
            "low: uncertain (in the band below the threshold; no alert)" if incident.priority == "low" else "",
        ),
        ("generation", f"{incident.generation_id} ({incident.generation_status}{early})"),
        ("model", f"{incident.model_fingerprint}, bundle version {incident.bundle_version}"),
        ("review", " · ".join(x for x in review if x)),
        ("metadata", ", ".join(f"{k}={v}" for k, v in sorted(incident.metadata.items())) or "—"),
        ("note", incident.note or ""),
    )
    for name, value in fields:
        if value:
            c.print(Text(f"  {name:11} {value}"))
    _print_conversation(c, incident, tokenizer, conversation)
    views = probe_views(incident, {}, tokenizer)
    own = next((v for v in views if v.current), None)
    if own is not None and own.cells:
        _print_tokens(c, own, top)
    others = [v for v in views if not v.current]
    if others:
        c.print(Text("other probes on this generation", "bold"))
        for v in others:
            mark = "  alerted" if v.flagged else ""
            c.print(Text(f"  {v.probe:20} {f(v.score)} (threshold {f(v.threshold)}){mark}"))
    if events:
        c.print(Text("review trail", "bold"))
    for e in events:
        extra = " ".join(x for x in (e.value or "", f"“{e.comment}”" if e.comment else "") if x)
        c.print(Text(f"  {e.at[:19]}  {e.reviewer}: {e.action} {extra}".rstrip()))


def _print_conversation(c: Console, incident: Incident, tokenizer: Any, conversation) -> None:
    if incident.prompt is None and incident.response is None:
        c.print(Text("  (no text stored: the store keeps none under --store-text none)", "dim"))
        return
    # the model's own chat template first (as the review page does), else the known templates' markers
    messages = conversation(incident, tokenizer) if tokenizer is not None else []
    pairs = [(m["role"], m["content"]) for m in messages]
    if not pairs or pairs[0][0] == "prompt":
        pairs = turns(incident.prompt) if incident.prompt else []
        if incident.response is not None:
            pairs.append(("assistant", incident.response))
    c.print(Text("conversation", "bold"))
    for role, content in pairs:
        lines = content.splitlines() or [""]
        body = Text(f"  {role}: ", "bold")
        body.append("\n".join([lines[0], *(" " * (len(role) + 4) + line for line in lines[1:])]))
        c.print(body)


def _print_tokens(c: Console, view, top: int) -> None:
    scored = [cell for cell in view.cells if cell.score is not None]
    ranked = sorted(scored, key=lambda cell: -cell.score)[: top or None]
    title = f"token scores ({view.probe}, threshold {tables.fmt(view.threshold)}; ▲ = at or above it: would alert)" + (
        f": the {len(ranked)} highest of {len(scored)}" if len(ranked) < len(scored) else ""
    )
    t = tables.table()
    tables.key(t, "pos", [str(cell.pos) for cell in ranked], justify="right")
    tables.key(t, "score", [tables.fmt(cell.score) for cell in ranked], justify="right")
    tables.key(t, "▲", [])
    tables.text(t, "token")
    for cell in ranked:
        token = cell.text.replace("\n", "") or "∅"
        where = " (prompt)" if cell.prompt else ""
        t.add_row(str(cell.pos), tables.fmt(cell.score), "▲" if cell.hot else "", Text(token + where))
    c.print(Text(title, "bold"))
    c.print(t)
