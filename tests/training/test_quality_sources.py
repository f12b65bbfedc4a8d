"""docs/quality.md's per-source helpers (training/quality_sources.py)."""

from __future__ import annotations

from probewatch.training.quality_sources import BASIS_TEXT, _basis_text


def test_a_selection_basis_names_its_folds_and_a_pre_screen_without_folds_stands_alone():
    """The nested table's 'chosen on' cell: 'held-out kind: a, b'; a pre-screen (no fold could be scored, e.g.
    too few examples to split) reads as the basis alone, not 'pre-screen (...): '."""
    assert _basis_text("heldout_kind", ["eval_choice", "eval_cot"]) == "held-out kind: eval_choice, eval_cot"
    assert _basis_text("prescreen", []) == BASIS_TEXT["prescreen"]
    assert _basis_text("heldout_group", ["1/4", "2/4"]) == (
        "held-out part of the one source of one kind left, split by group: 1/4, 2/4"
    )
    assert _basis_text("custom", []) == "custom"
