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
    assert set(TOKEN_SELECTIONS) == {"response", "prompt_last", "all"}


def test_unknown_selection_is_refused_not_read_as_all():
    with pytest.raises(CorruptBundleError, match="unknown token_selection 'everything'"):
        selection_mask("everything", np.arange(3), 1)


def test_offline_and_live_use_the_same_function():
    import probewatch.scoring as scoring
    import probewatch.server.sidecar.engine as engine

    assert scoring.selection_mask is selection_mask and engine.selection_mask is selection_mask
