"""Token texts under `--store-text redacted`: mask exactly the tokens whose text a redaction covers.

A heatmap shows one cell per token. Redacting each token's text alone would miss an e-mail address
split over ten tokens, and dropping tokens would shift every later cell; so the redaction rules run
once over the tokens' joined text, tracking where each replacement lies in that text, and each token
keeps what lies outside every replaced span: the token where a span starts shows the span's tag
(`[email]`), every later token inside it shows `MASK`. The positions stay aligned with the scores.

The tracking replays `privacy.redact`'s rules in the same order on the same text (each rule's
`edits` are what its `re.sub` replaces), so the joined masked tokens read like the redacted text.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from probewatch.server.store.privacy import _RULES, REDACT_MAX_CHARS

#: what a token entirely inside a redacted span (but not its first) shows
MASK = "█"

#: (start, end, tag): a replaced span of the original text
Span = tuple[int, int, str]


@dataclass
class _Seg:
    """A piece of the text after some rules: copied from the original (`tag` False) or a replacement."""

    start: int  # where it starts in the current text
    length: int
    orig_start: int
    orig_end: int
    tag: bool


class _Tracked:
    """The current text of a redaction in progress and, per piece, where it came from in the original."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.segs = [_Seg(0, len(text), 0, len(text), False)] if text else []
        self.starts = [0] if text else []

    def _seg(self, p: int) -> _Seg:
        return self.segs[bisect_right(self.starts, p) - 1]

    def orig_start(self, p: int) -> int:
        if p >= len(self.text):
            return self.segs[-1].orig_end if self.segs else 0
        seg = self._seg(p)
        return seg.orig_start if seg.tag else seg.orig_start + p - seg.start

    def orig_end(self, e: int) -> int:
        if e <= 0:
            return 0
        seg = self._seg(e - 1)
        return seg.orig_end if seg.tag else seg.orig_start + e - seg.start

    def _copy(self, a: int, b: int, out: list[_Seg], at: int) -> int:
        """Append the pieces of current text [a, b) to `out` starting at new position `at`."""
        if a >= b:
            return at
        i = bisect_right(self.starts, a) - 1
        while i < len(self.segs) and self.segs[i].start < b:
            seg = self.segs[i]
            lo, hi = max(a, seg.start), min(b, seg.start + seg.length)
            if seg.tag:  # part of an earlier tag: still stands for that tag's whole original span
                out.append(_Seg(at, hi - lo, seg.orig_start, seg.orig_end, True))
            else:
                off = seg.orig_start - seg.start
                out.append(_Seg(at, hi - lo, lo + off, hi + off, False))
            at += hi - lo
            i += 1
        return at

    def apply(self, edits: list[tuple[int, int, str]]) -> None:
        if not edits:
            return
        segs: list[_Seg] = []
        pieces: list[str] = []
        pos = at = 0
        for start, end, new in edits:
            start, end, new = _trim(self.text, start, end, new)
            at = self._copy(pos, start, segs, at)
            pieces.append(self.text[pos:start])
            o_start, o_end = self.orig_start(start), self.orig_end(end) if end > start else self.orig_start(start)
            segs.append(_Seg(at, len(new), o_start, max(o_start, o_end), True))
            pieces.append(new)
            at += len(new)
            pos = end
        self._copy(pos, len(self.text), segs, at)
        pieces.append(self.text[pos:])
        self.text = "".join(pieces)
        self.segs = [s for s in segs if s.length > 0]
        self.starts = [s.start for s in self.segs]

    def spans(self) -> list[Span]:
        """The replaced spans in original coordinates, in order; overlapping ones merged (first tag kept)."""
        out: list[Span] = []
        for seg in self.segs:
            if not seg.tag or seg.orig_end <= seg.orig_start:
                continue
            tag = self.text[seg.start : seg.start + seg.length]
            if out and seg.orig_start < out[-1][1]:
                prev = out[-1]
                out[-1] = (prev[0], max(prev[1], seg.orig_end), prev[2])
            else:
                out.append((seg.orig_start, seg.orig_end, tag))
        return out


def _trim(text: str, start: int, end: int, new: str) -> tuple[int, int, str]:
    """Shrink a replacement to what it changes (`password: hunter2` -> only `hunter2` becomes the tag)."""
    old = text[start:end]
    k = 0
    while k < len(old) and k < len(new) and old[k] == new[k]:
        k += 1
    j = 0
    while j < len(old) - k and j < len(new) - k and old[len(old) - 1 - j] == new[len(new) - 1 - j]:
        j += 1
    return start + k, end - j, new[k : len(new) - j]


def redaction_spans(text: str) -> tuple[str, list[Span]]:
    """(what `redact` makes of `text` without its truncation note, the spans it replaced, in `text`'s own
    coordinates). Reads at most REDACT_MAX_CHARS characters, like `redact`."""
    tracked = _Tracked(text[:REDACT_MAX_CHARS])
    for _name, rule in _RULES:
        tracked.apply(list(rule.edits(tracked.text)))
    return tracked.text, tracked.spans()


def mask_tokens(texts: Sequence[str]) -> list[str]:
    """Each token's text with what redaction replaces masked: the tag on a span's first token, MASK after."""
    joined = "".join(texts)
    _, spans = redaction_spans(joined)
    if len(joined) > REDACT_MAX_CHARS:  # never read by the rules: never stored readable
        spans.append((REDACT_MAX_CHARS, len(joined), MASK))
    out: list[str] = []
    pos = i = 0
    for token in texts:
        a, b = pos, pos + len(token)
        pos = b
        while i < len(spans) and spans[i][1] <= a:
            i += 1
        pieces: list[str] = []
        cur, k = a, i
        while k < len(spans) and spans[k][0] < b:
            start, end, tag = spans[k]
            if start > cur:
                pieces.append(joined[cur:start])
            pieces.append(tag if start >= a else MASK)
            cur = max(cur, end)
            if end > b:
                break
            k += 1
        if cur < b:
            pieces.append(joined[cur:b])
        out.append("".join(pieces))
    return out
