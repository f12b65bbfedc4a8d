"""docs/quality.md rendering from training reports (the benchmark itself is slow and not a test).

`render_markdown` is a pure function of the reports: no model, no clock.
"""

from __future__ import annotations

import copy
import json

import pytest

from probewatch.training.pipeline import TrainConfig, train
from probewatch.training.quality_doc import RunInfo, render_markdown
from probewatch.training.report import TrainReport
from tests.training.helpers import write_synthetic

RUN = RunInfo("tiny-model", "pwfp1:" + "0" * 32, 4, 64, 90.0, "2026-12-01 00:00 UTC", 2, "x86_64")


@pytest.fixture(scope="module")
def deception_report(tiny_loaded, tmp_path_factory):
    """report.json of a deception probe trained on synthetic dialogues with the tiny model."""
    tmp = tmp_path_factory.mktemp("quality")
    data, control = write_synthetic(tmp, n_groups=24)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            out=tmp / "b",
            progress=False,
            command="probewatch train --behaviour deception",
        ),
        loaded=tiny_loaded,
    )
    return json.loads(result.report_path.read_text())


def test_quality_markdown_tabulates_every_required_number(deception_report):
    report = deception_report
    diag = {"n": 4, "flagged": 1, "mean_score": -1.0, "threshold": 2.0}
    af = {**report, "probe_id": "alignment-faking", "behaviour": "alignment_faking"}
    text = render_markdown({"deception": report, "alignment-faking": af}, {"alignment-faking": diag}, RUN)
    assert render_markdown({"deception": report, "alignment-faking": af}, {"alignment-faking": diag}, RUN) == text
    chosen, op = report["selection"]["chosen"], report["operating_point"]
    header = [line for line in text.splitlines() if line.startswith("| probe | behaviour |")][0]
    for column in (
        "in-distribution AUROC",
        "held-out-kind AUROC",
        "shipped threshold",
        "flagged test negatives",
        "flagged held-out control",
        "layer",
        "method",
        "aggregation",
    ):
        assert column in header
    row = [line for line in text.splitlines() if line.startswith("| `deception` | deception |")][0]
    assert f"{report['metrics']['auroc']:.3f}" in row and f"| {chosen['layer']} |" in row and chosen["method"] in row
    assert f"{100 * op['shipped']['fpr_negatives']:.0f}%" in row and f"{op['shipped']['recall']:.3f}" in row
    assert "Layer sweep" in text and "quality/deception/roc.png" in text and "1 of 4 benign requests" in text
    assert "quality/deception/operating_points.png" in text
    assert "probewatch train --behaviour deception" in text and "2026-12-01 00:00 UTC" in text


def test_quality_markdown_has_both_operating_points_per_probe_and_control_kind(deception_report):
    report = deception_report
    text = render_markdown({"deception": report}, {}, RUN)
    section = text.split("## Thresholds on production-like traffic")[1].split("\n## ")[0]
    header = [line for line in section.splitlines() if line.startswith("| probe |")][0]
    assert "control: control" in header  # one column per control kind (the synthetic control set has one)
    row = [line for line in section.splitlines() if line.startswith("| `deception` |")][0]
    op = report["operating_point"]
    assert f"{op['control_threshold']:.2f}" in row and f"{op['threshold']:.2f}" in row
    met = op["shipped"]["recall"] >= 0.5 and op["shipped"]["fpr_negatives"] <= 0.2
    assert ("| yes |" in row) == met


def test_quality_markdown_says_when_the_transfer_limit_was_lowered_to_keep_recall(deception_report):
    limited = copy.deepcopy(deception_report)
    op = limited["operating_point"]
    op |= {"hard_negative_kind": None, "hard_negatives_per_kind": True, "transfer_fpr": 0.002}
    op |= {"transfer_threshold": op["threshold"]}
    text = render_markdown({"deception": limited}, {}, RUN)
    assert "transfer limit" in text and "flagging 0.2% of them, the share the held-out sources asked for" in text
    op["transfer_fpr"], op["transfer_recall_floor"] = 0.0, 0.25
    text = render_markdown({"deception": limited}, {}, RUN)
    assert (
        "lowered from flagging the 0.0% of them the held-out sources asked for to keep 25% of the calibration"
        " positives" in text
    )


def test_quality_markdown_compares_held_out_kinds_with_the_previous_run(deception_report):
    """Before/after per kind; a renamed probe (monitored-framing) falls back to the old alignment-faking report."""
    report = deception_report
    old = copy.deepcopy(report)
    kinds = list(report["metrics"]["auroc_heldout_kind_per_kind"])
    old["metrics"]["auroc_heldout_kind_per_kind"] = dict.fromkeys(kinds[:-1], 0.5)
    old["metrics"]["auroc_heldout_kind"] = 0.5
    framing = {**report, "probe_id": "monitored-framing", "behaviour": "monitored_framing"}
    text = render_markdown(
        {"deception": report, "monitored-framing": framing},
        {},
        RUN,
        baseline={"deception": old, "alignment-faking": old},
    )
    section = text.split("## Held-out-kind AUROC: previous run")[1].split("\n## ")[0]
    after = report["metrics"]["auroc_heldout_kind_per_kind"]
    first = [line for line in section.splitlines() if line.startswith(f"| `deception` | {kinds[0]} |")][0]
    assert f"| 0.500 | {after[kinds[0]]:.3f} | {after[kinds[0]] - 0.5:+.3f} |" in first
    last = [line for line in section.splitlines() if line.startswith(f"| `deception` | {kinds[-1]} |")][0]
    assert last.endswith("| new |")
    assert any(line.startswith(f"| `monitored-framing` | {kinds[0]} | 0.500 |") for line in section.splitlines())
    assert "**mean over kinds**" in section
    assert "## Held-out-kind AUROC: previous run" not in render_markdown({"deception": report}, {}, RUN)


def test_quality_markdown_gives_the_summary_as_previous_run_to_this_run(deception_report):
    """One row per probe with a previous report: changed cells as "before → after", unchanged ones once;
    a previous report that lacks a field (written by an older version) shows "—" for it."""
    report = deception_report
    old = copy.deepcopy(report)
    old["metrics"]["auroc"] = 0.5
    old["operating_point"]["shipped"]["recall"] = 0.25
    old["metrics"]["auroc_ood"] = None
    text = render_markdown({"deception": report}, {}, RUN, baseline={"deception": old, "refusal": old})
    section = text.split("### Summary: previous run → this run")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert len(rows) == 1  # no row for a previous probe this run did not train
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    metrics, shipped = report["metrics"], report["operating_point"]["shipped"]
    assert cells[0] == "`deception`"
    assert cells[1] == f"0.500 → {metrics['auroc']:.3f}"
    assert cells[2] == f"{metrics['auroc_heldout_kind']:.3f}"  # unchanged: once
    ood = ", ".join(f"{k} — → {v:.3f}" for k, v in (metrics["auroc_ood"] or {}).items()) or "—"
    assert cells[3] == ood  # per set: none had a value before
    assert cells[5] == f"0.250 → {shipped['recall']:.3f}"
    chosen = report["selection"]["chosen"]
    assert cells[8] == f"L{chosen['layer']} · {chosen['method']} · {chosen['aggregation']}"
    assert "### Summary: previous run" not in render_markdown({"deception": report}, {}, RUN)


def test_the_summary_change_of_out_of_distribution_sets_is_per_set(deception_report):
    """One moved set among several is the only arrow; a set the previous run lacked shows "— →", one this
    run dropped "→ —"."""
    report = copy.deepcopy(deception_report)
    report["metrics"]["auroc_ood"] = {"a": 0.7, "b": 0.8}
    old = copy.deepcopy(report)
    old["metrics"]["auroc_ood"] = {"a": 0.7, "b": 0.75, "gone": 0.6}
    text = render_markdown({"deception": report}, {}, RUN, baseline={"deception": old})
    section = text.split("### Summary: previous run → this run")[1].split("\n## ")[0]
    row = next(line for line in section.splitlines() if line.startswith("| `"))
    assert [c.strip() for c in row.strip("|").split("|")][3] == "a 0.700, b 0.750 → 0.800, gone 0.600 → —"


def test_quality_markdown_names_every_layer_of_a_shipped_multi_layer_probe(deception_report):
    report = copy.deepcopy(deception_report)
    assert report["multi_layer"] and report["multi_layer"]["concat"]
    report["multi_layer"] |= {"layers": [1, 3], "shipped": True}
    text = render_markdown({"deception": report}, {}, RUN)
    (row,) = [line for line in text.splitlines() if line.startswith("| `deception` | deception |")]
    assert "| 1+3 | logistic |" in row or f"| 1+3 | {report['selection']['chosen']['method']} |" in row
    assert "Chosen: layers 1, 3 (one probe on their concatenation" in text
    # the aggregation (and C) rows beside a concat are the single-layer sweep at its first layer: said so
    first = report["selection"]["chosen"]["layer"]
    note = "single-layer probes on the first of the concatenated layers; "
    assert f"Aggregations at layer {first}, the chosen method and C ({note}validation / held-out kinds):" in text
    report["multi_layer"]["shipped"] = False
    text = render_markdown({"deception": report}, {}, RUN)
    assert f"Chosen: layer {report['selection']['chosen']['layer']}, " in text
    assert f"Aggregations at layer {first}, the chosen method and C (validation / held-out kinds):" in text
    assert note not in text
    assert "on the held-out-source folds that chose" not in text  # a run without the source check


def test_quality_markdown_gives_the_multi_layer_decision_on_held_out_sources(deception_report):
    report = copy.deepcopy(deception_report)
    single = {"config": {"layer": 2}, "mean": 0.7012, "worst": 0.6013, "folds": {}}
    concat = {"config": {"layers": [1, 3]}, "mean": 0.7234, "worst": 0.5512, "folds": {}}
    report["multi_layer"] |= {"layers": [1, 3], "shipped": False}
    losses = {"pub": [-0.0501, -0.1012, 0.0163]}
    report["multi_layer"]["heldout_source"] = {"single": single, "concat": concat, "holds": False, "losses": losses}
    text = render_markdown({"deception": report}, {}, RUN)
    assert (
        "on the held-out-source folds that chose the single-layer probe (fitted on the other sources; mean / worst):"
        " single 0.701 / 0.601, concatenated 0.723 / 0.551, so the held-out-source rule keeps the single layer"
        " (where the concatenated probe scores lower, the paired change: pub -0.050 (95% CI -0.101 to +0.016));"
        " one layer is shipped" in text
    )
    report["multi_layer"] |= {"shipped": True, "heldout_source": {"single": single, "concat": concat, "holds": True}}
    text = render_markdown({"deception": report}, {}, RUN)
    assert "so the held-out-source rule prefers the concatenated probe; the concatenated probe is shipped" in text


def test_quality_markdown_puts_sae_feature_probes_beside_the_linear_probe(deception_report):
    """The SAE section lists the linear probe first, then each SAE-feature probe of that behaviour,
    and its reading sentence is computed from the numbers (not fixed prose)."""
    report = deception_report
    lin = report["metrics"]["auroc"]

    def sae_summary(probe_id: str, auroc: float, n: int) -> dict:  # the shape fit_and_export_sae_probe returns
        return {
            "probe_id": probe_id,
            "behaviour": "deception",
            "probe_type": "l1_logistic",
            "sae": "l1-topk-test",
            "layer": 1,
            "n_latents": n,
            "command": f"probewatch sae probe --behaviour deception ({probe_id})",
            "metrics": {
                "auroc": auroc,
                "auroc_heldout_kind": 0.61,
                "auroc_heldout_kind_per_kind": {"a": 0.6, "b": 0.62},
                "auroc_ood": {},
                "recall_at_fpr_control": 0.2,
                "fpr_control_heldout": 0.01,
            },
        }

    sae = {
        "sae-deception-l1": sae_summary("sae-deception-l1", lin - 0.2, 40),
        "sae-deception-named": sae_summary("sae-deception-named", lin - 0.3, 8),
    }
    text = render_markdown({"deception": report}, {}, RUN, sae)
    section = text.split("## SAE-feature probes vs linear probes")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| deception |")]
    assert len(rows) == 3 and "(linear," in rows[0] and "`sae-deception-l1`" in rows[1] and "| 40 latents |" in rows[1]
    assert f"{lin - 0.2:.3f}" in rows[1] and "0.610 (0.60–0.62)" in rows[1]
    assert (
        "`sae-deception-l1`, 40 latents) trails the linear probe" in section and "alert on the linear probes" in section
    )
    assert "probewatch sae probe --behaviour deception (sae-deception-named)" in text

    better = {"sae-deception-l1": sae_summary("sae-deception-l1", min(1.0, lin + 0.005), 40)}
    text = render_markdown({"deception": report}, {}, RUN, better)
    assert "matches the linear probe" in text and "alert on the linear probes" not in text
    assert "## SAE-feature probes" not in render_markdown({"deception": report}, {}, RUN)

    # a shipped multi-layer probe: the linear row names every layer it reads and their joint width
    report["multi_layer"] |= {"layers": [1, 3], "shipped": True}
    text = render_markdown({"deception": report}, {}, RUN, sae)
    linear_row = next(line for line in text.splitlines() if "(linear," in line)
    assert f"| 1+3 | {2 * RUN.d_model} dims |" in linear_row


def test_quality_markdown_is_the_same_from_the_typed_report_and_its_json(deception_report):
    """render_markdown takes TrainReports; a report.json's dict gives the same document."""
    typed = TrainReport.from_json(deception_report)
    baseline = {"deception": deception_report}
    text = render_markdown({"deception": typed}, {}, RUN, baseline=baseline)
    assert text == render_markdown({"deception": deception_report}, {}, RUN, baseline={"deception": typed})
    assert text.startswith("# Detection quality of the shipped probes\n") and text.endswith("`\n")
    assert "## Regenerate" in text and "{{" not in text and "{%" not in text


def test_quality_markdown_of_the_shipped_reports_renders():
    """Every shipped report.json renders (the document `make bench-quality` writes, without the run)."""
    from probewatch.bundle_index import shipped_root

    reports = {p.parent.name: json.loads(p.read_text()) for p in sorted(shipped_root().glob("*/*/report.json"))}
    text = render_markdown(reports, {}, RUN)
    for probe_id in reports:
        assert f"## `{probe_id}` (" in text


def test_quality_markdown_scores_the_replaced_bundle_on_this_runs_data(deception_report):
    """`compared` (probewatch train --compare-with): "replaced bundle → this run" on the same test split and OOD sets,
    with the paired change and its interval where the report has one; a bundle that could not be scored says why."""
    report = copy.deepcopy(deception_report)
    metrics = report["metrics"]
    ood_name = next(iter(metrics["auroc_ood"] or {"sycophancy_caa": None}))
    report["compared"] = [
        {"path": "p", "probe_id": "deception", "layers": [15, 17], "version": "1", "created_at": "2026-12-01T04:36:36",
         "test_auroc": 0.9, "test_per_kind": {}, "ood_auroc": {ood_name: 0.5}, "skipped": None,
         "delta_ci": {"test": [0.0731, 0.0412, 0.1007]}},
        {"path": "q", "probe_id": "old", "layers": [9], "version": "1", "created_at": "", "test_auroc": None,
         "test_per_kind": {}, "ood_auroc": {}, "skipped": "layers [9] are not in this run's activation cache"},
    ]  # fmt: skip
    text = render_markdown({"deception": report}, {}, RUN, baseline={"deception": deception_report})
    section = text.split("| probe | replaced bundle | test split AUROC | out-of-distribution AUROC |")[1]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("| `")]
    now_ood = (metrics["auroc_ood"] or {}).get(ood_name)
    assert rows[0] == [
        "`deception`",
        "`deception` L15+17, 2026-12-01",
        f"0.9000 → {metrics['auroc']:.4f} (+0.0731, 95% CI +0.0412 to +0.1007)",  # the paired change, measured
        f"{ood_name} 0.5000 → {'—' if now_ood is None else f'{now_ood:.4f}'}",
    ]
    assert rows[1][1] == "`old` L9" and rows[1][2].startswith("not scored: layers [9]")
    assert "replaced bundle" not in render_markdown({"deception": deception_report}, {}, RUN)


def test_quality_markdown_says_where_a_pool_holds_augmented_copies(deception_report):
    """A probe trained with `--augment` says how many copies its pool held; one without says nothing."""
    report = deception_report
    assert "augmented copies" not in render_markdown({"deception": report}, {}, RUN)
    report["data"]["notes"]["augmented"] = {"sincerity": 24}
    section = render_markdown({"deception": report}, {}, RUN).split("## `")[1]
    assert "The pool holds augmented copies (24 sincerity; `training/augment.py`)" in section
