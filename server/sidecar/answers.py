"""Token selection `answer` live: a reply's score read from the option its letter names, as offline.

A probe with token selection `answer` reads the reply's tokens, unless the reply is a multiple-choice
letter ("(B)"): then it reads the prompt tokens of the option that letter names (the rule:
`probes/answer_option.py`; offline: `probes/selection.py`). Live, the choice is only known once the
reply has started, after the prompt rows have gone by, so the engine hands such a probe every token
(its layer plan asks clients for every prompt row) and `AnswerAggregator` keeps what the choice can
need: the prompt's token ids and scores, and the reply's first `REPLY_PIECES` ids. The reply's tokens
stream into the probe's own aggregation as for `response`; the option's reading is computed when the
reply names one, from the kept prompt scores with the offline function, so the final value is the
offline value token for token (the parity tests hold them together).

Token text comes from the bundle's vocabulary table (`probes/vocab.py`) applied to the token ids each
chunk carries; a client that sends no ids leaves every piece empty, and the probe reads the reply
(as offline without pieces), and so does a probe none of whose option tokens were scored (vLLM's prefix
cache skips the rows of a cached prompt block: docs/vllm.md). Memory is bounded: at most `MAX_PROMPT_TOKENS` prompt positions are kept
per probe and generation (a longer prompt's later options are not seen, and the reply is read).
"""

from __future__ import annotations

import numpy as np

from probewatch.probes.aggregate import Aggregator, aggregate, make_aggregator
from probewatch.probes.answer_option import REPLY_PIECES, answer_letter, option_positions, reply_text
from probewatch.probes.vocab import Vocabulary
from probewatch.server.sidecar.specs import ProbeSpec

__all__ = ["MAX_PROMPT_TOKENS", "AnswerAggregator", "aggregator_for"]

#: prompt positions an `answer` probe keeps per generation (an 8-byte id and an 8-byte score each)
MAX_PROMPT_TOKENS = 1 << 17


class AnswerAggregator(Aggregator):
    """One `answer` probe in one generation: the reply's running aggregate, or the chosen option's."""

    def __init__(self, spec: ProbeSpec, prompt_length: int) -> None:
        super().__init__()
        self.spec = spec
        self.prompt_length = prompt_length
        self.vocabulary: Vocabulary | None = spec.vocabulary
        self.reply = make_aggregator(spec.aggregation)  # the reply's tokens, streamed in position order
        kept = min(prompt_length, MAX_PROMPT_TOKENS)
        self._ids = np.full(kept + REPLY_PIECES + 1, -1, dtype=np.int64)  # prompt ids, then the reply's first
        self._kept = kept
        self._scores: np.ndarray | None = None  # [kept, width] prompt token scores (NaN: not arrived)
        self._prompt_seen = 0  # bumped when a kept prompt id changes
        self._reply_seen = 0  # ... a reply id the rule reads
        self._chosen_key: tuple[int, int, int] | None = None
        self._chosen = np.zeros(0, dtype=np.int64)
        self._letter: str | None = None  # the option letter of `_chosen`
        self._options: tuple[int, dict[str, np.ndarray]] | None = None  # (prompt_seen, letter -> positions)

    def tokens(self, positions: np.ndarray, token_ids: np.ndarray | None) -> None:
        """Record a chunk's token ids (any layer's chunk: they are the same tokens) where the rule reads them."""
        if token_ids is None or not len(positions):
            return
        slot = np.where(positions < self.prompt_length, positions, positions - self.prompt_length + self._kept)
        keep = (positions < self._kept) | ((positions >= self.prompt_length) & (slot < len(self._ids)))
        changed = keep & (self._ids[np.minimum(slot, len(self._ids) - 1)] != token_ids)
        if changed.any():
            self._ids[slot[changed]] = token_ids[changed]
            self._prompt_seen += int((positions[changed] < self._kept).any())
            self._reply_seen += int((positions[changed] >= self.prompt_length).any())

    def add(self, positions: np.ndarray, scores: np.ndarray) -> None:
        """Feed the probe's scores ([m] or [m, width]) at `positions` (a chunk's, in position order)."""
        scores = np.asarray(scores, dtype=np.float64)
        prompt = positions < self._kept
        if prompt.any():
            if self._scores is None:
                width = 1 if scores.ndim == 1 else scores.shape[1]
                self._scores = np.full((self._kept, width), np.nan)
            self._scores[positions[prompt]] = scores[prompt].reshape(int(prompt.sum()), -1)
        reply = positions >= self.prompt_length
        if reply.any():
            self.reply.update(scores[reply])

    def update(self, scores: object) -> float:
        raise TypeError("an answer probe's scores need their positions: use add(positions, scores)")

    def chosen(self) -> np.ndarray:
        """Prompt positions of the option the reply names (empty: it names none, or no token text is known).
        The reply's letter is read from its first tokens at each change; the prompt's options are parsed once
        per change of the prompt (in practice once per generation)."""
        n_reply = min(self.reply.count, REPLY_PIECES + 1)
        key = (n_reply, self._reply_seen, self._prompt_seen)
        if key == self._chosen_key:
            return self._chosen
        self._chosen_key = key
        self._chosen = np.zeros(0, dtype=np.int64)
        self._letter = None
        vocab = self.vocabulary
        if vocab is None or n_reply == 0:
            return self._chosen
        reply = vocab.of(self._ids[self._kept : self._kept + n_reply])  # an id not yet sent (-1) spells nothing
        letter = answer_letter(reply_text(reply))
        if letter is None:  # most replies: the prompt is never looked at
            return self._chosen
        if self._options is None or self._options[0] != self._prompt_seen:  # beyond the kept prompt: no option
            prompt = vocab.of(self._ids[: self._kept])
            self._options = (self._prompt_seen, option_positions(prompt, self._kept))
        if letter in self._options[1]:
            self._chosen, self._letter = self._options[1][letter], letter
        return self._chosen

    def option_read(self) -> tuple[str, np.ndarray, np.ndarray] | None:
        """(letter, prompt positions, their scores [m, width]) of the option the probe reads now; None when
        it reads the reply (no option named, or none of the named option's tokens scored)."""
        chosen = self.chosen()
        if not chosen.size or self._scores is None or self._letter is None:
            return None
        chosen = chosen[chosen < self._kept]
        scored = ~np.isnan(self._scores[chosen]).any(axis=1)  # a token whose score never came (a cached prefix) is out
        if not scored.any():
            return None
        return self._letter, chosen[scored], self._scores[chosen[scored]]

    @property
    def value(self) -> float:
        read = self.option_read()
        if read is not None:
            picked = read[2]
            self.count = len(picked)
            return aggregate(picked if picked.shape[1] > 1 else picked[:, 0], self.spec.aggregation)
        self.count = self.reply.count  # no option named, or none of its tokens scored: the reply
        return self.reply.value


def aggregator_for(spec: ProbeSpec, prompt_length: int) -> Aggregator:
    """A new generation's aggregator for `spec`: the answer reading for token selection `answer`."""
    if spec.token_selection == "answer":
        return AnswerAggregator(spec, prompt_length)
    return make_aggregator(spec.aggregation)
