"""`probewatch bench augmentation` end to end on a tiny random-init model and a user JSONL: the same splits
for the plain and the augmented probe, every held-out assertion scored, the report and the plot written."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from probewatch.benchmarks import augmentation
from probewatch.data.dialogue import write_dialogues
from probewatch.training.augment_effect import HELD_OUT_ASSERTIONS, HELD_OUT_NOTICES
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


def test_bench_offers_every_training_augmentation():
    from probewatch.training.augment import AUGMENTATIONS

    assert tuple(AUGMENTATIONS) == augmentation.AUGMENTATION_NAMES


def test_bench_refuses_to_measure_an_augmentation_against_itself(tmp_path):
    parser = argparse.ArgumentParser()
    augmentation.add_cli_args(parser)
    args = parser.parse_args(["--augment", "sincerity", "--base", "sincerity", "--out", str(tmp_path / "b.json")])
    with pytest.raises(SystemExit, match="--base sincerity is the augmentation measured"):
        augmentation.run(args)
