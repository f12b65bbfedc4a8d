"""One token-selection rule for live and offline scoring."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.probes.errors import CorruptBundleError
from probewatch.probes.manifest import TOKEN_SELECTIONS
from probewatch.probes.selection import selection_mask


def test_rules_for_each_token_selection():
    positions = np.arange(6)
    assert selection_mask("response", positions, 4).tolist() == [False] * 4 + [True] * 2
    assert selection_mask("prompt_last", positions, 4).tolist() == [False, False, False, True, False, False]
    assert selection_mask("all", positions, 4).all()
    written = np.array([False, False, False, False, True, False])  # a written answer's content only
    assert selection_mask("response", positions, 4, response=written).tolist() == written.tolist()
    assert set(TOKEN_SELECTIONS) == {"response", "prompt_last", "all", "answer"}


QUESTION = ["Pick", ":", "\n", "(A)", " stay", "\n", "(B)", " leave", " now", "\n"]


@pytest.mark.parametrize(
    ("reply", "reads"),
    [
        (["(B)"], [7, 8]),  # a letter: the prompt tokens of the option it names
        (["I", " would", " choose", " (", "A", ")."], [4]),
        (["I", " stay"], [10, 11]),  # no letter: the reply, as `response`
        (["(C)"], [10]),  # a letter the question has no option for: the reply
    ],
)
def test_answer_reads_the_option_a_letter_names(reply, reads):
    pieces = QUESTION + reply
    positions = np.arange(len(pieces))
    mask = selection_mask("answer", positions, len(QUESTION), pieces=pieces)
    assert positions[mask].tolist() == reads
    # without token text (a client that sent no ids) it reads the reply
    assert positions[selection_mask("answer", positions, len(QUESTION))].tolist() == list(range(10, len(pieces)))


def test_answer_reads_only_the_written_reply_offline():
    """Offline the reply is the written answer's content (`response`), not the template's closing tokens."""
    pieces = [*QUESTION, "(A)", "<|im_end|>", "\n"]
    written = np.zeros(len(pieces), dtype=bool)
    written[10] = True
    positions = np.arange(len(pieces))
    assert positions[selection_mask("answer", positions, 10, response=written, pieces=pieces)].tolist() == [4]


def test_unknown_selection_is_refused_not_read_as_all():
    with pytest.raises(CorruptBundleError, match="unknown token_selection 'everything'"):
        selection_mask("everything", np.arange(3), 1)


def test_offline_and_live_use_the_same_function():
    import probewatch.scoring as scoring
    import probewatch.server.sidecar.engine as engine

    assert scoring.selection_mask is selection_mask and engine.selection_mask is selection_mask
