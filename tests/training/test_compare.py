"""`--compare-with` (training/compare.py): an existing bundle scored on this run's test split and OOD sets, from
the cached activations, exactly as stage 5 scores the new probe; what it cannot score is said, not failed."""

from __future__ import annotations

import numpy as np
import pytest

from probewatch.metrics import auroc
from probewatch.training.compare import befores, paired_auroc_delta
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import write_synthetic


def _config(tmp_path, data, control, out: str, layers: list[int], **kw) -> TrainConfig:
    return TrainConfig(behaviour="deception", data_files=[data], control_file=control, layers=layers,
                       out=tmp_path / out, progress=False, plots=False, multi_layer=0, parity_check=0, **kw)  # fmt: skip


def test_a_bundle_compared_on_the_run_that_made_it_scores_what_its_report_says(tiny_loaded, tmp_path):
    data, control = write_synthetic(tmp_path, n_groups=24)
    first = train(_config(tmp_path, data, control, "a", [1, 3]), loaded=tiny_loaded)
    assert first.report.compared is None and "compared" not in first.report.to_json()
    layer = first.report.chosen["layer"]
    other = 3 if layer == 1 else 1
    again = train(
        _config(tmp_path, data, control, "b", [1, 3], compare_with=[first.bundle_path, tmp_path / "nowhere"]),
        loaded=tiny_loaded,
    )
    same, missing = again.report.compared
    # same data, seed and splits: the first bundle on this run's test split is the first report's test AUROC
    assert same["probe_id"] == first.report.probe_id and same["layers"] == [layer] and same["skipped"] is None
    assert same["test_auroc"] == pytest.approx(first.report.metrics.auroc, abs=1e-9)
    assert same["test_per_kind"] == pytest.approx(first.report.metrics.auroc_test_per_kind, abs=1e-9)
    # the same probe again, on the same split: no change, and an interval of exactly nothing on every set
    assert same["test_same_split"] is True
    assert set(same["delta_ci"]) == {"test", *same["ood_auroc"]}
    assert all(ci == pytest.approx([0.0, 0.0, 0.0], abs=1e-12) for ci in same["delta_ci"].values())
    assert missing["skipped"].startswith("cannot load") and missing["test_auroc"] is None and missing["delta_ci"] == {}
    # a run whose cache lacks the bundle's layer says so instead of scoring something else
    narrow = train(_config(tmp_path, data, control, "c", [other], compare_with=[first.bundle_path]), loaded=tiny_loaded)
    [skipped] = narrow.report.compared
    assert skipped["skipped"] == f"layers [{layer}] are not in this run's activation cache (swept: [{other}])"
    assert skipped["test_auroc"] is None


def test_a_bundle_of_another_model_is_not_compared(tiny_loaded, other_tiny_folder, tmp_path):
    from probewatch.models import load_model

    data, control = write_synthetic(tmp_path, n_groups=24)
    foreign = train(_config(tmp_path, data, control, "f", [1]), loaded=load_model(str(other_tiny_folder)))
    run = train(_config(tmp_path, data, control, "g", [1], compare_with=[foreign.bundle_path]), loaded=tiny_loaded)
    [cmp] = run.report.compared
    assert cmp["skipped"].startswith("cannot load") and "fingerprint" in cmp["skipped"].lower()


def test_the_paired_change_has_an_interval_that_separates_a_real_gain_from_noise():
    rng = np.random.default_rng(3)
    labels = np.r_[np.ones(40), np.zeros(160)]
    signal = labels * 1.5 + rng.normal(size=200)
    better = labels * 3.0 + rng.normal(size=200)
    jitter = signal + rng.normal(scale=0.05, size=200)  # the same probe up to noise
    gain = paired_auroc_delta(signal, better, labels)
    assert gain[0] == pytest.approx(auroc(better, labels) - auroc(signal, labels)) and 0 < gain[1] < gain[0] < gain[2]
    same = paired_auroc_delta(signal, jitter, labels)
    assert same[1] < 0 < same[2] and abs(same[0]) < 0.01  # a change in the third place, inside its interval
    assert (
        paired_auroc_delta(signal, better, labels, seed=1) != gain
        and paired_auroc_delta(signal, better, labels) == gain
    )
    assert paired_auroc_delta(signal, better, np.ones(200)) is None  # one class: no AUROC, no interval


def test_a_bundle_from_another_pool_gets_no_test_before(tiny_loaded, tmp_path):
    """More groups re-draw the grouped test split, which may then hold the old bundle's training rows: its
    test AUROC is kept but marked, with no paired change; the OOD sets (never trained on) still compare."""
    from probewatch.training.quality_changes import same_data_change
    from probewatch.training.report import TrainReport

    data, control = write_synthetic(tmp_path, n_groups=24)
    first = train(_config(tmp_path, data, control, "a", [1]), loaded=tiny_loaded)
    (tmp_path / "more").mkdir()
    more, control2 = write_synthetic(tmp_path / "more", n_groups=30)
    run = train(_config(tmp_path, more, control2, "b", [1], compare_with=[first.bundle_path]), loaded=tiny_loaded)
    [cmp] = run.report.compared
    assert cmp["test_same_split"] is False and cmp["test_auroc"] is not None and "test" not in cmp["delta_ci"]
    assert set(cmp["delta_ci"]) == set(cmp["ood_auroc"])
    [(_, test_cell, _)] = same_data_change(TrainReport.from_json(run.report.to_json()))
    assert (
        test_cell.startswith(f"{run.report.metrics.auroc:.4f} (the replaced bundle's ") and "another pool" in test_cell
    )


def test_which_sets_are_a_before_is_one_rule_for_every_renderer():
    """The doc table and the CLI summary both read `befores`: the test split only from a bundle of this pool,
    every out-of-distribution set, each with its interval where measured, nothing from a skipped one."""
    same = {
        "test_auroc": 0.9,
        "test_same_split": True,
        "ood_auroc": {"val": 0.8},
        "delta_ci": {"test": [0.01, 0, 0.02]},
    }
    assert befores(same) == {"test": (0.9, [0.01, 0, 0.02]), "val": (0.8, None)}
    other_pool = {**same, "test_same_split": False, "delta_ci": {"val": [0.1, 0.05, 0.15]}}
    assert befores(other_pool) == {"val": (0.8, [0.1, 0.05, 0.15])}
    unknown = {"test_auroc": 0.9, "ood_auroc": {}}  # a report written before the pool signature existed
    assert befores(unknown) == {"test": (0.9, None)}
    assert befores({**same, "skipped": "cannot load: corrupt"}) == {}


def test_a_before_the_replaced_bundles_run_chose_it_on_is_marked(tiny_loaded, tmp_path, capsys):
    """A bundle whose run chose it on an out-of-distribution set (its report's selection basis "ood", as the
    refusal bundle of 2026-12-01 was chosen on refusal_val) gets `selected_on` for those sets, and the doc table
    and the train summary say its number there is a best of its sweep; a bundle chosen otherwise gets none."""
    import json

    from probewatch.cli.train_cmd import print_summary, summarize
    from probewatch.data.dialogue import write_dialogues
    from probewatch.training.compare import selected_on
    from probewatch.training.quality_changes import SELECTED_ON, same_data_change
    from probewatch.training.report import REPORT_FILENAME, TrainReport
    from tests.training.helpers import synthetic_dialogues

    data, control = write_synthetic(tmp_path, n_groups=24)
    ood = tmp_path / "held_val.jsonl"  # an out-of-distribution set, named by its file's stem
    write_dialogues(ood, synthetic_dialogues(n_groups=12, kinds=("kz",), seed=5))
    first = train(_config(tmp_path, data, control, "a", [1], ood_files=[ood]), loaded=tiny_loaded)
    report_path = first.bundle_path / REPORT_FILENAME
    theirs = json.loads(report_path.read_text())
    ood_sets = sorted(theirs["metrics"]["auroc_ood"])
    assert ood_sets == ["held_val"] and theirs["selection"]["basis"] == "heldout_kind" and selected_on(theirs) == []
    theirs["selection"]["basis"] = "ood"  # as a run without kinds chooses: best of its sweep on the OOD sets
    theirs["selection"]["chosen"]["ood_auroc"] = dict.fromkeys(ood_sets[:1], 0.9)
    report_path.write_text(json.dumps(theirs))
    assert selected_on(theirs) == ood_sets[:1] and selected_on(None) == [] and selected_on({}) == []

    run = train(
        _config(tmp_path, data, control, "b", [1], ood_files=[ood], compare_with=[first.bundle_path]),
        loaded=tiny_loaded,
    )
    [cmp] = run.report.compared
    assert cmp["selected_on"] == ood_sets[:1]
    [(_, _, ood_cells)] = same_data_change(TrainReport.from_json(run.report.to_json()))
    assert ood_cells.startswith("held_val ") and ood_cells.endswith(SELECTED_ON)  # the one set, marked
    print_summary(summarize(json.loads((run.bundle_path / REPORT_FILENAME).read_text())))
    assert f"{ood_sets[0]} " in (out := capsys.readouterr().out) and "(it was chosen on this set)" in out

    report_path.unlink()  # no report: nothing known, nothing marked
    again = train(
        _config(tmp_path, data, control, "c", [1], ood_files=[ood], compare_with=[first.bundle_path]),
        loaded=tiny_loaded,
    )
    assert again.report.compared[0]["selected_on"] == []
