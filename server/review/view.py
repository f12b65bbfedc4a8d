"""The incident page's view model: per-token heatmap cells per probe, the conversation, the timeline.

Heatmap colours are computed here (server-side, no JavaScript needed to read the page): a
diverging scale around each probe's own threshold in its score units (calibrated logits), orange
to deep red at or above the threshold and blue below, so "hot" means "would alert" for every probe
alike and the token that fired is the most conspicuous one.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, NamedTuple

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
    answer_option: str | None = None  # an `answer` probe that read the prompt's option this letter names
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


class ColourScale(NamedTuple):
    """Where a generation's colours start and saturate, in logits from the probe's threshold.

    floor: the distance above the threshold painted the lightest "above" shade (0, or the lowest
    above-threshold token when every one sits far above: a probe set to alert on everything);
    high: the distance painted the strongest "above" shade (the generation's highest token);
    low: the (negative) distance at which the blue "below" scale saturates.
    """

    floor: float = 0.0
    low: float = -SATURATE_BELOW
    high: float = SATURATE_ABOVE


#: the "above" scale runs from orange (at the threshold) to deep red (the generation's highest token):
#: a distinct hue from the blue "below" scale, so a token that fired is never a pale blue
ABOVE_FROM, ABOVE_TO = (251, 146, 60), (153, 27, 27)
BELOW_RGB = (37, 99, 235)
BELOW_ALPHA = (0.08, 0.55)


def _distance(score: float, threshold: float) -> float:
    """score - threshold, finite even for huge magnitudes (1e308 - -1e308 overflows to inf)."""
    d = score - threshold
    if math.isinf(d):
        return math.copysign(sys.float_info.max, d)
    return d


def _fraction(x: float, lo: float, hi: float) -> float:
    """Where x sits in [lo, hi], clamped to [0, 1]; an empty range (one token, ties) counts as the top."""
    if not hi > lo:
        return 1.0
    return min(1.0, max(0.0, (x - lo) / (hi - lo)))  # finite inputs: at worst +inf, never NaN


def colour(score: float | None, threshold: float | None, scale: ColourScale | None = None) -> str:
    """Inline style for one token: at or above the threshold an orange-to-red shade (deep red at the
    generation's highest token, white text), below it a blue that deepens with the distance below.
    "Above" is decided by `score >= threshold` itself, exactly as the `hot` flag, so floating-point
    error in a distance can never turn a token that fired blue."""
    if score is None or threshold is None or math.isnan(score) or not math.isfinite(threshold):
        return ""
    scale = scale or ColourScale()
    if score >= threshold:
        d = _distance(score, threshold) if math.isfinite(score) else sys.float_info.max
        t = _fraction(d, scale.floor, scale.high)
        r, g, b = (round(a + (z - a) * t) for a, z in zip(ABOVE_FROM, ABOVE_TO, strict=True))
        ink = "#fff" if t >= 0.5 else "#1f2328"  # the darker half of the scale takes white text
        return f"background-color: rgb({r}, {g}, {b}); color: {ink}"
    d = _distance(score, threshold) if math.isfinite(score) else -sys.float_info.max
    t = min(1.0, max(0.0, d / scale.low)) if scale.low < 0 else 1.0
    alpha = BELOW_ALPHA[0] + (BELOW_ALPHA[1] - BELOW_ALPHA[0]) * t
    return f"background-color: rgba({', '.join(map(str, BELOW_RGB))}, {alpha:.2f})"


def colour_scale(scores: dict[int, float | None], threshold: float | None) -> ColourScale:
    """This generation's scale for `colour`: the strongest red at its highest token, the blues saturating
    at its lowest one (at most SATURATE_BELOW logits below the threshold, at least 1). When every
    flagged token sits far above the threshold (a probe set to alert on everything), the reds span
    the flagged tokens' own range instead of all being the same deep red."""
    if threshold is None or not math.isfinite(threshold):
        return ColourScale()
    values = [v for v in scores.values() if v is not None and math.isfinite(v)]
    above = [_distance(v, threshold) for v in values if v >= threshold]
    below = [_distance(v, threshold) for v in values if v < threshold]
    floor = min(above) if above and min(above) > SATURATE_ABOVE else 0.0
    high = max(above, default=SATURATE_ABOVE)
    low = min(max(min(below, default=-SATURATE_BELOW), -SATURATE_BELOW), -1.0)
    return ColourScale(floor, low, high)


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


#: a prompt_last probe's heatmap shows this many prompt tokens up to the one it scored (the sidecar keeps
#: their texts: server/sidecar/alerts.py PROMPT_TAIL_TOKENS)
PROMPT_TAIL = 8


def incident_texts(incident: Incident, tokenizer: Any) -> dict[int, str]:
    """Position -> token text: as the sidecar stored it (under its text policy), else decoded from the
    stored token ids with the model's tokenizer (incidents written before token texts were kept)."""
    if incident.token_texts:
        return {int(p): str(t) for p, t in incident.token_texts}
    return token_texts(tokenizer, incident.tokens)


def token_note(incident: Incident, tokenizer: Any) -> str:
    """Why a heatmap shows positions or ids instead of words ("" when it shows words)."""
    if incident.token_texts:
        return (
            "Token texts as the sidecar kept them: redacted text is masked (█)."
            if incident.text_policy == "redacted"
            else ""
        )
    if incident.text_policy == "none":
        return (
            "Token text is not kept: the sidecar stores no text of this generation (--store-text none), "
            "so tokens show as positions."
        )
    if not incident.tokens:
        return "Token text is not available for this generation (the client sent none): tokens show as positions."
    if tokenizer is None:
        return "Token text is not available here (no tokenizer for this model on this machine): tokens show as ids."
    return ""


def _shown(
    info: dict[str, Any], scores: dict[int, float | None], texts: dict[int, str], ids: set[int], prompt_length: int
) -> list[int]:
    """The positions one probe's heatmap shows: its scored tokens, the response, the tokens with ids, and
    for a prompt_last probe the prompt's last PROMPT_TAIL tokens (the scored token alone reads as `↵`)."""
    shown = set(scores) | ids | {p for p in texts if p >= prompt_length >= 0}
    if info.get("token_selection") == "prompt_last" and prompt_length > 0:
        shown |= {p for p in texts if prompt_length - PROMPT_TAIL <= p < prompt_length}
    return sorted(shown)


def _display(text: str) -> str:
    if text == "":
        return ""
    if not text.strip():
        return text.replace("\n", "↵\n").replace("\t", "⇥") or "␣"
    return text


def probe_views(incident: Incident, siblings: dict[str, int], tokenizer: Any) -> list[ProbeView]:
    """One view per probe that scored the generation (the incident's own first, then by score)."""
    texts = incident_texts(incident, tokenizer)
    ids = {int(p) for p, _ in incident.tokens}
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
        positions = _shown(info, scores, texts, ids, prompt_length)
        scale = colour_scale(scores, threshold)
        cells = []
        for pos in positions:
            s = scores.get(pos)
            hot = s is not None and threshold is not None and s >= threshold
            style = colour(s, threshold, scale)
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
                answer_option=info.get("answer_option"),
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
    "assign": "assigned to",
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
