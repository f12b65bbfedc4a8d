"""`probewatch bench augmentation` end to end on a tiny random-init model and a user JSONL: the same splits
for the plain and the augmented probe, every held-out assertion scored, the report and the plot written;
paraphrase copies on the hand-written scenarios, scored on the test scenarios' second wording only."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from probewatch.benchmarks import augmentation
from probewatch.data.dialogue import write_dialogues
from probewatch.training.augment_effect import AS_WRITTEN, HELD_OUT_ASSERTIONS, HELD_OUT_NOTICES, PARAPHRASED
from probewatch.training.datasets.scenarios import load_scenarios, scenario_dialogues, scenario_files
from probewatch.training.evasion import load_paraphrases
from tests.training.helpers import save_tiny_model, synthetic_dialogues


@pytest.mark.parametrize(
    ("augment", "base", "held_out"),
    [
        ("sincerity", None, HELD_OUT_ASSERTIONS),
        ("monitoring", None, HELD_OUT_NOTICES),
        ("monitoring", "sincerity", HELD_OUT_ASSERTIONS | HELD_OUT_NOTICES),  # a shipped deception probe's copies
    ],
)
def test_bench_fits_both_probes_per_layer_and_writes_report_and_plot(tmp_path, monkeypatch, augment, base, held_out):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROBEWATCH_ACTIVATIONS", raising=False)
    model = save_tiny_model(tmp_path / "tiny", seed=0)
    data = tmp_path / "pairs.jsonl"
    write_dialogues(data, synthetic_dialogues(n_groups=30))
    parser = argparse.ArgumentParser()
    augmentation.add_cli_args(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(
        [
            "--model",
            str(model),
            "--data",
            str(data),
            "--layers",
            "1,2",
            "--concat",
            "--out",
            str(out),
            "--quiet",
            "--C",
            "1",
            "--augment",
            augment,
            *(["--base", base] if base else []),
        ]
    )
    assert augmentation.main(args) == 0

    report = json.loads(out.read_text())
    assert report["behaviour"] is None and report["data"] == [str(data)] and report["share"] == 0.5
    originals = report["n_fit"] - report["n_base_copies"]
    assert originals + report["n_test"] == 60 and report["n_copies"] == originals // 2
    assert report["n_base_copies"] == (originals // 2 if base else 0)
    assert report["augment"] == augment and report["base"] == base and report["held_out"] == held_out
    assert [(r["layers"], r["training"]) for r in report["rows"]] == [
        ("1", "plain"),
        ("1", "augmented"),
        ("2", "plain"),
        ("2", "augmented"),
        ("1+2", "plain"),
        ("1+2", "augmented"),
    ]
    for row in report["rows"]:
        assert row["n_fit"] == report["n_fit"] + (report["n_copies"] if row["training"] == "augmented" else 0)
        assert set(row["results"]) == set(held_out)
        assert 0.0 <= row["clean"]["auroc"] <= 1.0 and 0.0 <= row["clean"]["recall"] <= 1.0
        for result in row["results"].values():
            assert 0.0 <= result["auroc"] <= 1.0 and math.isfinite(result["median_positive_change"])
            assert 0.0 <= result["flagged_negatives"] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 5_000


def _args(tmp_path, model, data, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    augmentation.add_cli_args(parser)
    common = ["--model", str(model), "--data", str(data), "--layers", "2", "--quiet", "--C", "1"]
    return parser.parse_args([*common, "--out", str(tmp_path / "bench.json"), *extra])


def test_paraphrase_copies_are_measured_on_the_test_scenarios_second_wording(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PROBEWATCH_ACTIVATIONS", raising=False)
    model = save_tiny_model(tmp_path / "tiny", seed=0)
    scenarios = load_scenarios(scenario_files()[0])[:12]
    written = [d for d in scenario_dialogues(scenarios) if d.ends_with_assistant]
    data = tmp_path / "scenarios.jsonl"
    write_dialogues(data, [*written, *synthetic_dialogues(n_groups=10, with_response=True)])
    extra = ("--augment", "paraphrase", "--share", "1", "--base", "sincerity")
    assert augmentation.main(_args(tmp_path, model, data, *extra)) == 0

    report = json.loads((tmp_path / "bench.json").read_text())
    table = load_paraphrases()
    assert report["held_out"] == HELD_OUT_ASSERTIONS | {
        AS_WRITTEN: "the same answers as written",
        PARAPHRASED: report["held_out"][PARAPHRASED],
    }
    assert "paraphrases.yaml" in report["held_out"][PARAPHRASED]
    n_written = len(written)
    # every fit scenario answer is copied once (share 1); the other answers have no second wording
    test_scenarios = report["rows"][0]["results"][AS_WRITTEN]
    n_test_written = test_scenarios["n_positive"] + test_scenarios["n_negative"]
    assert report["n_copies"] == n_written - n_test_written and 0 < n_test_written < report["n_test"]
    originals = report["n_fit"] - report["n_base_copies"]
    assert abs(report["n_base_copies"] - originals / 2) <= 1  # --share is the measured copies'; the base keeps 0.5
    assert all(d.messages[-1].content in table for d in written)
    for row in report["rows"]:
        as_written, reworded = row["results"][AS_WRITTEN], row["results"][PARAPHRASED]
        assert (as_written["n_positive"], as_written["n_negative"]) == (reworded["n_positive"], reworded["n_negative"])
        assert as_written["median_positive_change"] == 0.0  # paired against itself
        assert math.isfinite(reworded["median_positive_change"]) and 0.0 <= reworded["auroc"] <= 1.0


def test_paraphrase_copies_need_scenario_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    model = save_tiny_model(tmp_path / "tiny", seed=0)
    data = tmp_path / "pairs.jsonl"
    write_dialogues(data, synthetic_dialogues(n_groups=10))
    with pytest.raises(SystemExit, match="no fit item of this pool gets a paraphrase copy"):
        augmentation.run(_args(tmp_path, model, data, "--augment", "paraphrase"))


def test_bench_offers_every_training_augmentation():
    from probewatch.training.augment import AUGMENTATIONS

    assert tuple(AUGMENTATIONS) == augmentation.AUGMENTATION_NAMES


def test_bench_refuses_to_measure_an_augmentation_against_itself(tmp_path):
    parser = argparse.ArgumentParser()
    augmentation.add_cli_args(parser)
    args = parser.parse_args(["--augment", "sincerity", "--base", "sincerity", "--out", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match="--base sincerity is the augmentation measured"):
        augmentation.run(args)
