"""The incident page's view model: per-token heatmap cells per probe, the conversation, the timeline.

Heatmap colours are computed here (server-side, no JavaScript needed to read the page): a
diverging scale around each probe's own threshold in its score units (calibrated logits), red
above the threshold and blue below, so "hot" means "would alert" for every probe alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from probewatch.server.store.records import Incident, ReviewEvent

#: logits over/under the threshold at which the colour saturates
SATURATE_ABOVE, SATURATE_BELOW = 4.0, 6.0


@dataclass
class TokenCell:
    pos: int
    text: str
    score: float | None
    hot: bool
    style: str
    prompt: bool  # a prompt position (before the generated tokens)


@dataclass
class ProbeView:
    probe: str
    behaviour: str
    score: float | None
    threshold: float | None
    flagged: bool
    n_tokens: int
    aggregation: str
    token_selection: str
    layer: int | None
    version: str | None
    current: bool  # the incident's own probe
    incident_id: int | None = None  # this probe's incident on the same generation, if it alerted
    cells: list[TokenCell] = field(default_factory=list)

    @property
    def hot_cells(self) -> int:
        return sum(c.hot for c in self.cells)


@dataclass
class TimelineEntry:
    at: str
    what: str
    who: str | None = None
    detail: str | None = None


def colour(
    score: float | None, threshold: float | None, low: float = -SATURATE_BELOW, high: float = SATURATE_ABOVE
) -> str:
    """Red at or above the threshold, blue below it; the intensity grows with the distance from the
    threshold, saturating at `high` above / `low` below it (the generation's own extremes, so a probe
    whose threshold sits far from every score still shows which tokens drive it)."""
    if score is None or threshold is None or not math.isfinite(score):
        return ""
    d = score - threshold
    if d >= 0:
        alpha = 0.3 + 0.7 * min(1.0, d / max(high, 1e-9))
        return f"background-color: rgba(220, 38, 38, {alpha:.2f}); color: {'#fff' if alpha > 0.6 else 'inherit'}"
    alpha = 0.08 + 0.47 * min(1.0, d / min(low, -1e-9))
    return f"background-color: rgba(37, 99, 235, {alpha:.2f})"


def colour_scale(scores: dict[int, float | None], threshold: float | None) -> tuple[float, float, float]:
    """(offset, low, high) for `colour`: saturation at this generation's own extremes (at most
    SATURATE_* logits from the threshold). When every flagged token sits far above the threshold
    (a probe set to alert on everything), the red shades span the flagged tokens' own range instead."""
    values = [v for v in scores.values() if v is not None and math.isfinite(v)]
    if threshold is None or not values:
        return 0.0, -SATURATE_BELOW, SATURATE_ABOVE
    above = [v - threshold for v in values if v >= threshold]
    below = [v - threshold for v in values if v < threshold]
    offset = min(above) if above and min(above) > SATURATE_ABOVE else 0.0
    if offset:
        high = max(max(above) - offset, 1e-6)
    else:
        high = min(max(max(above, default=SATURATE_ABOVE), 1.0), SATURATE_ABOVE)
    low = min(max(min(below, default=-SATURATE_BELOW), -SATURATE_BELOW), -1.0)
    return offset, low, high


def token_texts(tokenizer: Any, tokens: list[list[int]]) -> dict[int, str]:
    """Position -> the text of the token there. A character split over several byte tokens goes to
    the last of them (decoding one byte token alone would give U+FFFD)."""
    out: dict[int, str] = {}
    if not tokens:
        return out
    if tokenizer is None:
        return {int(p): f"⟨{int(t)}⟩" for p, t in tokens}
    pending: list[tuple[int, int]] = []
    previous = None
    for pos, tid in tokens:
        pos, tid = int(pos), int(tid)
        if previous is not None and pos != previous + 1 and pending:  # a gap: flush what we have
            for p, _ in pending:
                out[p] = out.get(p, "")
            pending = []
        pending.append((pos, tid))
        previous = pos
        text = tokenizer.decode([t for _, t in pending], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if text.endswith("\ufffd") and len(pending) < 4:
            continue
        for p, _ in pending[:-1]:
            out[p] = ""
        out[pending[-1][0]] = text
        pending = []
    for p, _ in pending:
        out[p] = "\ufffd"
    return out


def _display(text: str) -> str:
    if text == "":
        return ""
    if not text.strip():
        return text.replace("\n", "↵\n").replace("\t", "⇥") or "␣"
    return text


def probe_views(incident: Incident, siblings: dict[str, int], tokenizer: Any) -> list[ProbeView]:
    """One view per probe that scored the generation (the incident's own first, then by score)."""
    texts = token_texts(tokenizer, incident.tokens)
    context = dict(incident.context) or {
        incident.probe: {
            "behaviour": incident.behaviour,
            "score": incident.score,
            "threshold": incident.threshold,
            "flagged": True,
            "n_tokens": len(incident.token_scores),
            "aggregation": incident.aggregation,
            "token_selection": "",
            "token_scores": incident.token_scores,
        }
    }
    prompt_length = incident.prompt_length if incident.prompt_length is not None else -1
    views = []
    for probe, info in context.items():
        current = probe == incident.probe
        pairs = incident.token_scores if current and incident.token_scores else info.get("token_scores") or []
        scores = {int(p): (None if s is None else float(s)) for p, s in pairs}
        threshold = info.get("threshold")
        positions = sorted(set(texts) | set(scores))
        offset, low, high = colour_scale(scores, threshold)
        cells = []
        for pos in positions:
            s = scores.get(pos)
            hot = s is not None and threshold is not None and s >= threshold
            style = colour(None if s is None else s - offset if hot else s, threshold, low, high)
            cells.append(TokenCell(pos, _display(texts.get(pos, f"#{pos}")), s, hot, style, pos < prompt_length))
        views.append(
            ProbeView(
                probe=probe,
                behaviour=str(info.get("behaviour", "")),
                score=incident.score if current else info.get("score"),
                threshold=threshold,
                flagged=bool(info.get("flagged")) or current,
                n_tokens=int(info.get("n_tokens") or len(scores)),
                aggregation=str(info.get("aggregation", "")),
                token_selection=str(info.get("token_selection", "")),
                layer=info.get("layer"),
                version=info.get("version"),
                current=current,
                incident_id=siblings.get(probe),
                cells=cells,
            )
        )
    views.sort(key=lambda v: (not v.current, -(v.score if v.score is not None else -math.inf)))
    return views


def conversation(incident: Incident, tokenizer: Any) -> list[dict[str, str]]:
    """The prompt as messages (when the model's chat template reproduces it) and the response."""
    messages: list[dict[str, str]] = []
    if incident.prompt:
        parsed = None
        if tokenizer is not None:
            from probewatch.data.unrender import messages_from_prompt

            parsed = messages_from_prompt(tokenizer, incident.prompt)
        messages.extend(parsed or [{"role": "prompt", "content": incident.prompt}])
    if incident.response is not None:
        messages.append({"role": "assistant", "content": incident.response})
    return messages


_ACTION_TEXT = {
    "claim": "claimed",
    "unclaim": "gave back to the queue",
    "label": "labelled",
    "severity": "set severity",
    "comment": "commented",
    "resolve": "resolved",
    "reopen": "reopened",
    "status": "set status",
}


def timeline(incident: Incident, events: list[ReviewEvent]) -> list[TimelineEntry]:
    entries = [
        TimelineEntry(
            incident.created_at,
            "alert raised while generating (early)" if incident.early else "alert raised at the end of the generation",
            detail=f"{incident.probe}: {incident.score:+.3f} ≥ {incident.threshold:+.3f}",
        )
    ]
    ended = incident.generation_updated_at or incident.updated_at
    if incident.generation_status != "open":
        entries.append(TimelineEntry(ended, f"generation {incident.generation_status}"))
    for e in events:
        what = _ACTION_TEXT.get(e.action, e.action)
        if e.value:
            what = f"{what} {e.value.replace('_', ' ')}"
        entries.append(TimelineEntry(e.at, what, who=e.reviewer, detail=e.comment))
    entries.sort(key=lambda x: x.at)
    return entries
