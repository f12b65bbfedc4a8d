"""`probewatch train` with the attention-pooling probe on a tiny model: alone it is swept on every layer
and exported as a kind `attention` bundle whose live scoring path reproduces the cached scores; beside
the linear methods it is one candidate on the best response layer, chosen only by the sweep's rule."""

from __future__ import annotations

import json

import pytest

from probewatch.cli.main import main
from probewatch.probes import load_bundle
from probewatch.training.sweep import SweepRow, best_row
from tests.training.helpers import write_synthetic


def _train(root, tiny_folder, methods: str) -> dict:
    data, control = write_synthetic(root, n_groups=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBEWATCH_HOME", str(root / "home"))
        args = ["train", "--behaviour", "deception", "--model", str(tiny_folder), "--data", str(data)]
        args += ["--control", str(control), "--out", str(root / "bundle"), "--quiet", "--json", "--method", methods]
        assert main(args) == 0
    return json.loads((root / "bundle" / "report.json").read_text())


def _rows(report: dict) -> list[SweepRow]:
    fields = set(SweepRow.__dataclass_fields__)
    return [SweepRow(**{k: v for k, v in r.items() if k in fields}) for r in report["sweep"]]


def test_attention_alone_is_swept_on_every_layer_and_exported(tiny_folder, tiny_loaded, tmp_path):
    report = _train(tmp_path, tiny_folder, "attention")
    rows = [r for r in report["sweep"] if r["method"] == "attention"]
    assert len(rows) == len(report["sweep"]) >= 2 and len({r["layer"] for r in rows}) == len(rows)
    assert all(r["aggregation"] == "attention" and r["heldout_kind_auroc"] is not None for r in rows)
    bundle = load_bundle(tmp_path / "bundle", expected_fingerprint=tiny_loaded.fingerprint, expected_d_model=64)
    m = bundle.manifest
    assert m.kind == "attention" and m.aggregation.method == "attention" and m.normalization == "standardize"
    assert set(bundle.tensors) == {"query", "query_bias", "weight", "bias", "mean", "scale"}
    assert m.metrics["auroc"] > 0.85 and m.extra["direction_norm"] > 0
    # score_dialogues through the bundle (the live scoring path) == the training pipeline's cached scores
    assert report["parity"]["n"] > 0 and report["parity"]["max_abs_diff"] < 1e-4


def test_beside_linear_methods_it_is_one_candidate_chosen_by_the_rule(tiny_folder, tmp_path):
    report = _train(tmp_path, tiny_folder, "logistic,attention")
    rows = _rows(report)
    attention = [r for r in rows if r.method == "attention"]
    linear = [r for r in rows if r.method == "logistic" and r.token_selection == "response"]
    basis = report["selection"]["basis"]
    assert len(attention) == 1 and attention[0].layer == best_row(linear, basis).layer
    chosen = report["selection"]["chosen"]
    want = best_row(rows, basis)
    assert (chosen["method"], chosen["layer"], chosen["aggregation"]) == (want.method, want.layer, want.aggregation)
