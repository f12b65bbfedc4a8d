"""docs/quality.md's pooling, family and evasion sections (training/quality_extras_doc.py), rendered from
the shipped deception report plus hand-made family and evasion reports: exact cells."""

from __future__ import annotations

import json
from pathlib import Path

from probewatch.training.quality_doc import RunInfo, render_markdown
from probewatch.training.quality_extras_doc import evasion_items, family_rows, pooling_rows
from probewatch.training.report import TrainReport

SHIPPED = Path(__file__).resolve().parents[2] / "probes" / "shipped" / "smollm2-135m-instruct"
RUN = RunInfo("smollm2-135m-instruct", "pwfp1:" + "0" * 32, 30, 576, 90.0, "2026-12-03 00:00 UTC", 2, "x86_64")

FAMILY = {
    "family_id": "deception-family",
    "members": {"sandbagging": "deception-sandbagging", "omission": "deception-omission"},
    "skipped_types": ["sycophancy"],
    "threshold": {"value": 0.42, "set_by": "hard_negatives"},
    "per_type": {
        "sandbagging": {"kinds": ["sandbagging", "mm_sandbagging"], "n_test": 30, "auroc_member": 0.91,
                        "auroc_family": 0.88, "auroc_single": 0.7},
        "omission": {"kinds": ["lie_by_omission"], "n_test": 12, "auroc_member": 0.95, "auroc_family": 0.9,
                     "auroc_single": None},
    },
    "test": {"family": {"auroc": 0.87}, "single": {"auroc": 0.9}},
    "heldout_kind": {"family_mean": 0.81, "single_mean": 0.86},
    "n_test": 42,
}  # fmt: skip
EVASION = [
    {
        "probe_id": "refusal",
        "behaviour": "refusal",
        "threshold": 0.22,
        "data": "x",
        "results": [
            {"condition": "unmodified", "n_positive": 40, "n_negative": 40, "auroc": 1.0, "recall": 1.0,
             "flagged_negatives": 0.0, "mean_positive": 3.0, "median_positive_change": None},
            {"condition": "told it is monitored", "n_positive": 40, "n_negative": 40, "auroc": 0.99, "recall": 0.625,
             "flagged_negatives": 0.05, "mean_positive": 1.0, "median_positive_change": -1.59},
            {"condition": "sincerity rewording", "n_positive": 40, "n_negative": 40, "auroc": 0.9, "recall": 0.075,
             "flagged_negatives": 0.0, "mean_positive": 0.5, "median_positive_change": -0.76,
             "median_positive_change_answer": 0.364},
        ],
    }
]  # fmt: skip


def _deception() -> TrainReport:
    return TrainReport.read(SHIPPED / "deception" / "report.json")


def test_pooling_row_names_the_shipped_and_best_alternatives():
    report = _deception()
    report.sweep = [
        {**report.chosen, "heldout_kind_auroc": 0.8},
        {**report.chosen, "method": "attention", "aggregation": "attention", "heldout_kind_auroc": 0.83},
        {**report.chosen, "aggregation": "max_norm", "heldout_kind_auroc": 0.79},
        {**report.chosen, "aggregation": "rolling_mean_max", "heldout_kind_auroc": 0.75},
    ]
    (row,) = pooling_rows({"deception": report})
    layer = report.chosen["layer"]
    assert row["attention"] == f"0.830 (layer {layer} attention, attention)"
    assert row["normalised"].startswith("0.790 ") and row["raw_max"].startswith("0.750 ")
    report.sweep.append(  # the attention probe over the option a letter names: the cell says what it reads
        {
            **report.chosen,
            "method": "attention",
            "aggregation": "attention",
            "token_selection": "answer",
            "heldout_kind_auroc": 0.9,
        }
    )
    (row,) = pooling_rows({"deception": report})
    assert row["attention"] == f"0.900 (layer {layer} attention, attention, reads answer)"
    refusal = TrainReport.read(SHIPPED / "refusal" / "report.json")
    assert pooling_rows({"refusal": refusal}) == []  # a prompt_last probe pools nothing


def test_family_and_evasion_sections_render_exact_cells():
    text = render_markdown({"deception": _deception()}, {}, RUN, families={"deception": FAMILY}, evasion=EVASION)
    assert "## Deception as a family: `deception-family`" in text
    assert "| sandbagging | sandbagging, mm_sandbagging | 30 | 0.910 | 0.880 | 0.700 |" in text
    assert "| omission | lie_by_omission | 12 | 0.950 | 0.900 | n/a |" in text
    assert "| **held-out kind (mean)** |  |  |  | 0.810 | 0.860 |" in text
    assert "Skipped (too little data): sycophancy." in text
    assert "| `refusal` | told it is monitored | 40 / 40 | 0.990 | 0.62 | 5% | -1.59 | — |" in text
    assert "| `refusal` | unmodified | 40 / 40 | 1.000 | 1.00 | 0% | — | — |" in text
    assert "| `refusal` | sincerity rewording | 40 / 40 | 0.900 | 0.07 | 0% | -0.76 | +0.36 |" in text
    assert "Items: `refusal`: x. For the monitoring-cue probes" in text
    assert [r["type"] for r in family_rows(FAMILY)][-2:] == ["**whole test split**", "**held-out kind (mean)**"]
    assert "(threshold 0.42, set by hard negatives)." in text  # no transfer limit: no word of it


def test_family_threshold_set_by_the_transfer_limit_says_the_share():
    limited = {**FAMILY, "threshold": {"value": 1.3, "set_by": "transfer", "transfer_fpr": 0.025}}
    text = render_markdown({"deception": _deception()}, {}, RUN, families={"deception": limited})
    assert "(threshold 1.30, set by transfer; the single probe's transfer limit allows 2.5% of the calibration" in text
    capped = {**limited, "threshold": {**limited["threshold"], "transfer_fpr": 0.0, "transfer_recall_floor": 0.25}}
    text = render_markdown({"deception": _deception()}, {}, RUN, families={"deception": capped})
    assert "allows 0.0% of the calibration negatives, lowered to keep 25% of the calibration positives)" in text


def test_evasion_items_name_each_source_once():
    reports = [{"probe_id": "a", "data": "pool A"}, {"probe_id": "b", "data": "val"}, {"probe_id": "c", "data": "val"}]
    assert evasion_items(reports) == "`a`: pool A; `b`, `c`: val"


def test_without_family_or_evasion_the_sections_are_absent():
    text = render_markdown({"deception": _deception()}, {}, RUN)
    assert "## Evasion" not in text and "as a family" not in text
    assert json.loads((SHIPPED / "deception" / "report.json").read_text())["probe_id"] == "deception"
