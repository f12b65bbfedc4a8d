"""The ship gate of `bench quality --ship` (benchmarks/quality_ship.py): a threshold that flags most of one
kind's test negatives does not ship, and the previous run comes back in place of the rejected one."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from probewatch.benchmarks.quality_ship import (
    MAX_KIND_FLAGGED,
    MIN_KIND_EXAMPLES,
    discard_previous,
    over_flagged_kinds,
    reject,
    set_aside,
    ship_refusal,
)
from probewatch.training.report import KindOperating, TrainReport

DOCS = Path(__file__).resolve().parents[2] / "docs" / "quality"
PUBLISHED = sorted(DOCS.glob("*/report.json"))


def _report(path: Path) -> TrainReport:
    return TrainReport.from_json(json.loads(path.read_text()))


@pytest.mark.parametrize("path", PUBLISHED, ids=lambda p: p.parent.name)
def test_every_published_probe_passes_the_gate(path):
    report = _report(path)
    assert ship_refusal(report) is None
    worst = max((k.fpr_negatives or 0.0) for k in report.operating_point.per_kind.values())
    assert worst <= MAX_KIND_FLAGGED


def test_a_threshold_that_flags_a_whole_kind_is_refused_by_name():
    """The stop-32 alignment-faking retrain: 18% of the pooled negatives, all of the long ones."""
    report = copy.deepcopy(_report(DOCS / "alignment-faking" / "report.json"))
    per_kind = report.operating_point.per_kind
    per_kind["af_long_generated"] = KindOperating(recall=1.0, fpr_negatives=1.0, n=12)
    per_kind["af_long"] = KindOperating(recall=1.0, fpr_negatives=0.83, n=12)
    per_kind["tiny"] = KindOperating(recall=1.0, fpr_negatives=1.0, n=MIN_KIND_EXAMPLES - 1)  # too few to judge
    per_kind["at_limit"] = KindOperating(recall=1.0, fpr_negatives=MAX_KIND_FLAGGED, n=40)  # not above it
    assert over_flagged_kinds(report.operating_point) == {"af_long": 0.83, "af_long_generated": 1.0}
    why = ship_refusal(report)
    assert why is not None and "af_long 83%, af_long_generated 100%" in why and "more than 50%" in why
    assert f"{report.operating_point.threshold:.2f}" in why


def _write(folder: Path, text: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(text)


def test_a_rejected_run_is_kept_aside_and_the_previous_run_comes_back(tmp_path):
    _write(tmp_path / "deception", "previous")
    _write(tmp_path / "deception-family", "previous family")
    set_aside(tmp_path, "deception")
    assert not (tmp_path / "deception").exists()  # training writes a fresh folder
    _write(tmp_path / "deception", "rejected")
    _write(tmp_path / "deception-family", "rejected family")
    kept = reject(tmp_path, "deception")
    assert kept == [tmp_path / "deception.rejected", tmp_path / "deception-family.rejected"]
    assert (tmp_path / "deception" / "report.json").read_text() == "previous"
    assert (tmp_path / "deception-family" / "report.json").read_text() == "previous family"
    assert (tmp_path / "deception.rejected" / "report.json").read_text() == "rejected"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "deception",
        "deception-family",
        "deception-family.rejected",
        "deception.rejected",
    ]


def test_a_shipped_run_drops_the_previous_one_and_a_first_run_has_none(tmp_path):
    _write(tmp_path / "refusal", "previous")
    set_aside(tmp_path, "refusal")
    _write(tmp_path / "refusal", "new")
    discard_previous(tmp_path, "refusal")
    assert [p.name for p in tmp_path.iterdir()] == ["refusal"]
    assert (tmp_path / "refusal" / "report.json").read_text() == "new"
    set_aside(tmp_path / "empty", "refusal")  # nothing to set aside: a fresh runs folder
    _write(tmp_path / "empty" / "refusal", "first")
    assert reject(tmp_path / "empty", "refusal") == [tmp_path / "empty" / "refusal.rejected"]
    assert not (tmp_path / "empty" / "refusal").exists()
