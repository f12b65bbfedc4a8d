"""What a multiple-choice answer means: the prompt tokens of the option its letter names.

A reply of "(B)" carries its meaning in the prompt. A probe that reads only the reply's tokens sees a
letter, and the residual stream at that letter holds little of what the option said: the shipped
evaluation-awareness probe separates such answers at 0.58 held out, and `probewatch bench
multiple-choice` measures what reading the option instead recovers. This module is the rule that finds,
from a dialogue's token pieces, the letter a reply chose and the prompt positions of that option's text.
Today the benchmark uses it; it lives in `probes/` (numpy and `re` only) because a token selection that
reads the chosen option must run the same rule in the sidecar as in training.

It works on *token pieces*: each token's text as the tokenizer decodes it alone, in sequence order.
Joined, the pieces give the text the rule parses, and each token's character range in it; a piece that is
a special token (`<|im_end|>`, `</s>`, `<end_of_turn>`: `<...>` with no space) reads as line breaks of its
length, so an option or a reply ends where the chat template's markup begins. Pieces need no tokenizer
at scoring time (a table of the vocabulary's pieces gives them), and the same pieces give the same
positions, token for token.

The rule, on the prompt (positions before `prompt_length`):
- an option starts at a marker: `(X)` or `[X]` anywhere, or `X)`, `X.` or `X:` at the start of a line,
  X a capital letter A-H; its text runs to the next marker of the same block or the end of the line;
- a block is a run of options lettered A, B, C, ... in order (a new A starts a new block); the last
  block with two or more options is the question the reply answers;
and on the reply (positions from `prompt_length` to `response_end`):
- `(X)`, `[X]` or `X)` at its start, or `X.` / `X:` and a space ("A. Mercury"); or X alone, with an
  optional `.` or `:`, as the whole reply; or X after "answer", "option" or "choice" ("The answer is
  (B)", "Answer: B") or after "I would choose", "I pick", "I'd go with" and the like ("I would choose
  (A)."); each of these also after a lead-in clause ended by ":" or "," on the reply's first line, with no
  bracket in it ("Honestly, (B)", "I'll be completely honest with you, and this is the truth: (A)": a
  sincerity preamble must not hide the letter). "A good question" is no answer: a bare capital must be the whole reply, and lower-case
  letters never count. A reply is judged on its first `REPLY_PIECES` tokens (every form above sits at
  its start; a longer reply is no bare letter), so a streaming reader decides from a bounded prefix
  exactly what a reader of the whole reply decides.
The chosen option's positions are the prompt tokens whose characters overlap its text.

`answer_positions` is what token selection `answer` reads (`probes/selection.py`): the chosen option's
prompt positions where the reply is an option letter, else nothing (the reader falls back to the reply).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "REPLY_PIECES",
    "RULE_VERSION",
    "ChosenOption",
    "answer_letter",
    "answer_positions",
    "chosen_option",
    "option_blocks",
    "option_positions",
    "parse_text",
    "piece_offsets",
    "reply_text",
]

LETTERS = "ABCDEFGH"
#: bumped on every change of which tokens a reply reads: activation caches keep the option rows the rule chose
#: at extraction (training/activation_cache.py), so their key carries it (3: a lead-in clause before the answer)
RULE_VERSION = 3
#: the reply tokens the rule reads: an answer's letter sits at its start
REPLY_PIECES = 64

_SPECIAL = re.compile(r"<[|/]?[A-Za-z_][^<>\s]*>")
_MARKER = re.compile(r"(?m)(?:^[ \t]*(?P<line>[A-H])[\).:]|[\(\[](?P<paren>[A-H])[\)\]])[ \t]*")
_WORDS = (
    r"(?i:(?:(?:the\s+)?(?:correct\s+|best\s+|right\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?"
    r"|(?:i\s*(?:would|will|'d|'ll)?\s+)?(?:choose|chose|pick|select|go\s+with)(?:\s+option)?)\s*)"
)
#: a lead-in clause before the answer, ended by ":" or "," ("I'll be honest with you, and this is the truth: (B)",
#: "Honestly, the answer is A"): one line, no bracket (so it holds no option marker), at most 120 characters
_LEAD = r"[^\n()\[\]]{1,120}?[:,][ \t]+"
_ANSWER = re.compile(
    rf"^\s*(?:{_LEAD})??(?:"  # lazy: a reply that answers at its start is read there, as without a lead
    r"[\(\[](?P<paren>[A-H])[\)\]]"
    r"|(?P<close>[A-H])(?:\)|[.:](?=\s))"
    r"|(?P<bare>[A-H])[.:]?\s*$"
    rf"|{_WORDS}[\(\[]?(?P<word>[A-H])(?![A-Za-z])"
    r")"
)


@dataclass(frozen=True)
class ChosenOption:
    """The letter a reply chose and the prompt positions of each option's text (the chosen one's first)."""

    letter: str
    positions: np.ndarray  # prompt positions of the chosen option's text
    others: dict[str, np.ndarray]  # letter -> prompt positions of every other option's text


def piece_offsets(pieces: Sequence[str]) -> np.ndarray:
    """[n + 1] character offsets of the pieces in their joined text (token i spans [out[i], out[i+1]))."""
    return np.concatenate([[0], np.cumsum([len(p) for p in pieces])]).astype(np.int64)


def parse_text(pieces: Sequence[str]) -> str:
    """The pieces joined, special tokens as line breaks of the same length (offsets unchanged)."""
    return "".join("\n" * len(p) if _SPECIAL.fullmatch(p) else p for p in pieces)


def option_blocks(text: str) -> list[dict[str, tuple[int, int]]]:
    """Every block of lettered options in `text`, in order: {letter: (start, end) of its text}."""
    marks = [(m.group("line") or m.group("paren"), m.start(), m.end()) for m in _MARKER.finditer(text)]
    blocks: list[dict[str, tuple[int, int]]] = []
    current: dict[str, tuple[int, int]] = {}

    def close_run() -> None:  # a run of two or more options is a block; a shorter one is prose
        nonlocal current
        if len(current) >= 2:
            blocks.append(current)
        current = {}

    for i, (letter, _, text_start) in enumerate(marks):
        line_end = text.find("\n", text_start)
        end = len(text) if line_end < 0 else line_end
        if i + 1 < len(marks) and marks[i + 1][1] < end:
            end = marks[i + 1][1]
        while end > text_start and text[end - 1].isspace():
            end -= 1
        expected = LETTERS[len(current)] if len(current) < len(LETTERS) else None
        if letter != expected:
            close_run()
            if letter != "A":
                continue
        if end > text_start:
            current[letter] = (text_start, end)
        else:  # an empty option breaks the run
            close_run()
    close_run()
    return blocks


def answer_letter(reply: str) -> str | None:
    """The option letter `reply` chose, or None when it is not a multiple-choice answer."""
    m = _ANSWER.match(reply)
    if m is None:
        return None
    return m.group("paren") or m.group("close") or m.group("bare") or m.group("word")


def reply_text(pieces: Sequence[str]) -> str:
    """The reply's text as the rule reads it: its first `REPLY_PIECES` pieces, closed by a mark that is no
    whitespace when the reply is longer (so a bare letter, which must be the whole reply, cannot match)."""
    text = parse_text(pieces[:REPLY_PIECES])
    return text + "\x00" if len(pieces) > REPLY_PIECES else text


def option_positions(pieces: Sequence[str], prompt_length: int) -> dict[str, np.ndarray]:
    """Letter -> prompt positions of that option's text, for the prompt's last block of options ({} without
    one): the part of the rule that reads only the prompt, so a streaming reader parses it once."""
    prompt = pieces[:prompt_length]
    blocks = option_blocks(parse_text(prompt))
    if not blocks:
        return {}
    offsets = piece_offsets(prompt)
    starts, ends = offsets[:-1], offsets[1:]

    def positions(span: tuple[int, int]) -> np.ndarray:
        a, z = span
        return np.flatnonzero((starts < z) & (ends > a) & (ends > starts))

    return {letter: positions(span) for letter, span in blocks[-1].items()}


def chosen_option(pieces: Sequence[str], prompt_length: int, response_end: int | None = None) -> ChosenOption | None:
    """The option the reply (pieces `prompt_length:response_end`) chose among the prompt's last block of
    options, with the prompt positions of every option's text; None where the reply is no option letter, the
    prompt has no such block, or the block has no option of that letter."""
    letter = answer_letter(reply_text(pieces[prompt_length:response_end]))
    if letter is None:  # most replies: no prompt parsing at all
        return None
    options = option_positions(pieces, prompt_length)
    if letter not in options:
        return None
    return ChosenOption(letter, options[letter], {k: v for k, v in options.items() if k != letter})


def answer_positions(pieces: Sequence[str], prompt_length: int, response_end: int | None = None) -> np.ndarray:
    """The prompt positions of the option the reply chose (empty where it chose none): what token selection
    `answer` reads instead of the reply."""
    chosen = chosen_option(pieces, prompt_length, response_end)
    return np.zeros(0, dtype=np.int64) if chosen is None else chosen.positions.astype(np.int64)
