"""Which token positions a probe reads: the one rule shared by live scoring and offline scoring.

Positions are sequence-local (0 = first real prompt token). `prompt_length` counts the prompt
including the generation prompt, so `prompt_length - 1` is the generation-prompt position and
positions from `prompt_length` on are the response. Offline, the response region of a written
dialogue is the last assistant message's content (its template's closing tokens excluded): pass
it as `response`; live, it is every generated token the client sent.

`answer` reads what a reply means: where the reply is a multiple-choice letter ("(B)"), the prompt
tokens of the option it names (`probes/answer_option.py`); any other reply, its own tokens. It needs
the tokens' *pieces* (each token's text, from the vocabulary table a bundle of this selection
carries); without them (a client that sent no token ids) it reads the reply, as `response` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from probewatch.probes.answer_option import answer_positions
from probewatch.probes.errors import CorruptBundleError
from probewatch.probes.manifest import TOKEN_SELECTIONS


def selection_mask(
    token_selection: str,
    positions: np.ndarray,
    prompt_length: int,
    response: np.ndarray | None = None,
    pieces: Sequence[str] | None = None,
) -> np.ndarray:
    """Boolean mask over `positions` of the tokens a probe with this `token_selection` reads.

    `pieces[p]` is the text of the token at position p (`answer` only; positions 0..the reply's end).

    Raises CorruptBundleError for a value outside TOKEN_SELECTIONS (a manifest that passed
    validation never has one): scoring all tokens instead would be a silent wrong answer.
    """
    positions = np.asarray(positions)
    if token_selection in ("response", "answer"):
        reply = positions >= prompt_length if response is None else np.asarray(response, dtype=bool)
        if token_selection == "response" or pieces is None or not reply.any():
            return reply
        chosen = answer_positions(pieces, prompt_length, int(positions[reply].max()) + 1)
        return np.isin(positions, chosen) if chosen.size else reply
    if token_selection == "prompt_last":
        return positions == prompt_length - 1
    if token_selection == "all":
        return np.ones(positions.shape, dtype=bool)
    raise CorruptBundleError(f"unknown token_selection {token_selection!r} (one of {', '.join(TOKEN_SELECTIONS)})")
