"""`probewatch bench augmentation` end to end on a tiny random-init model and a user JSONL: the same splits
for the plain and the augmented probe, every held-out assertion scored, the report and the plot written."""

from __future__ import annotations

import argparse
import json
import math

from probewatch.benchmarks import augmentation
from probewatch.data.dialogue import write_dialogues
from probewatch.training.augment_effect import HELD_OUT_ASSERTIONS
from tests.training.helpers import save_tiny_model, synthetic_dialogues


def test_bench_fits_both_probes_per_layer_and_writes_report_and_plot(tmp_path, monkeypatch):
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
        ]
    )
    assert augmentation.main(args) == 0

    report = json.loads(out.read_text())
    assert report["behaviour"] is None and report["data"] == [str(data)] and report["share"] == 0.5
    assert report["n_fit"] + report["n_test"] == 60 and report["n_copies"] == report["n_fit"] // 2
    assert report["assertions"] == HELD_OUT_ASSERTIONS
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
        assert set(row["results"]) == set(HELD_OUT_ASSERTIONS)
        assert 0.0 <= row["clean"]["auroc"] <= 1.0 and 0.0 <= row["clean"]["recall"] <= 1.0
        for result in row["results"].values():
            assert 0.0 <= result["auroc"] <= 1.0 and math.isfinite(result["median_positive_change"])
            assert 0.0 <= result["flagged_negatives"] <= 1.0
    assert out.with_suffix(".png").stat().st_size > 5_000
