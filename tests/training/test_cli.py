"""`probewatch train` / `eval` / `calibrate` end to end on a tiny model (seconds, no datasets needed)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from probewatch.cli.main import main
from probewatch.probes import load_bundle, read_manifest
from tests.training.helpers import write_synthetic


@pytest.fixture(scope="module")
def trained(tiny_folder, tmp_path_factory):
    """A bundle trained by the CLI on synthetic data: (bundle dir, data.jsonl, control.jsonl)."""
    root = tmp_path_factory.mktemp("trained")
    data, control = write_synthetic(root, n_groups=30)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBEWATCH_HOME", str(root / "home"))
        code = main(
            [
                "train",
                "--behaviour",
                "deception",
                "--model",
                str(tiny_folder),
                "--data",
                str(data),
                "--control",
                str(control),
                "--out",
                str(root / "bundle"),
                "--quiet",
                "--json",
            ]
        )
    assert code == 0
    return root / "bundle", data, control


def _run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_writes_bundle_report_and_plots(trained, tiny_loaded):
    bundle_dir, data, _ = trained
    for name in (
        "manifest.json",
        "weights.safetensors",
        "report.json",
        "auroc_by_layer.png",
        "roc.png",
        "score_hist.png",
    ):
        assert (bundle_dir / name).is_file(), name
    bundle = load_bundle(bundle_dir, expected_fingerprint=tiny_loaded.fingerprint, expected_d_model=64)
    m = bundle.manifest
    assert m.behaviour == "deception" and m.kind in ("linear", "mean_diff", "lat", "contrast") and m.layer in (1, 3)
    assert m.threshold.method == "fpr+hard_negatives" and m.threshold.fpr == 0.01 and m.threshold.n_calibration == 15
    assert m.threshold.calibration_set.startswith("control.jsonl")
    # no drift reference from 15 control calibration scores (fewer than its 20 bins); `calibrate` below
    # on 30 makes one
    assert "calibration_reference" not in m.extra
    assert m.metrics["auroc"] > 0.9 and "auroc_heldout_kind" in m.metrics
    t = m.training
    assert {"method", "layer", "C", "seed", "data", "sizes", "control", "platt"} <= set(t)
    assert t["data"][0]["sha256"] and t["data"][0]["path"].endswith("data.jsonl")
    report = json.loads((bundle_dir / "report.json").read_text())
    assert report["parity"]["max_abs_diff"] < 1e-3  # live scoring path == cached training scores
    assert report["selection"]["basis"] == "heldout_kind" and len(report["heldout_kinds"]) == 3
    assert report["sweep"] and report["platt"]["slope"] > 0
    # the uncertainty band: where the negatives raised the threshold it reaches down to the control threshold
    op = m.extra["operating_point"]
    band = op["uncertainty_band"]
    # the negatives limit holds per kind too; the manifest and the report name the kind that set it, if any
    assert op["hard_negative_kind"] == report["operating_point"].get("hard_negative_kind")  # omitted when pooled
    assert op["hard_negative_kind"] in (None, "ka", "kb", "kc")
    if op["set_by"] == "hard_negatives":
        assert m.threshold.uncertain_from == op["control_threshold"] < m.threshold.value
        assert (
            band["set_by"] == "control_threshold" and report["threshold"]["uncertain_from"] == op["control_threshold"]
        )
    elif op["recall_threshold"] < m.threshold.value:  # under half the calibration positives kept: a recall band
        edge = max(op["recall_threshold"], op["band_floor"], op["hard_negative_threshold"])
        assert band["set_by"] == ("recall" if edge < m.threshold.value else None)
    else:
        assert m.threshold.uncertain_from is None and band["uncertain_from"] is None
    shares = band["shares"]["control (held out)"]
    assert shares["recorded"] == pytest.approx(shares["flagged"] + shares["uncertain"])
    assert "threshold_band.png" in report["plots"] and (bundle_dir / "threshold_band.png").stat().st_size > 5000


def test_eval_json_last_line_and_metrics(trained, tiny_folder, tmp_path):
    bundle_dir, data, control = trained
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probewatch.cli.main",
            "eval",
            "--bundle",
            str(bundle_dir),
            "--model",
            str(tiny_folder),
            "--data",
            str(data),
            "--control",
            str(control),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["auroc"] > 0.9 and result["n_pos"] == 30 and result["n_neg"] == 30
    assert result["threshold_source"] == "control" and 0.0 <= result["recall_at_fpr"] <= 1.0


def test_eval_text_output_uses_negatives_without_control(trained, tiny_folder, capsys):
    bundle_dir, data, _ = trained
    code, out, _ = _run(
        ["eval", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--data", str(data), "--quiet"], capsys
    )
    assert code == 0 and "AUROC" in out and "from the negatives" in out


def test_eval_compare_with_reports_the_paired_change_and_its_interval(
    trained, tiny_folder, tiny_loaded, tmp_path, capsys
):
    """`eval --compare-with`: both bundles on the same dialogues, the change with a bootstrap interval."""
    from probewatch.probes import save_bundle

    bundle_dir, data, _ = trained
    base = ["eval", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--data", str(data), "--quiet"]
    code, out, _ = _run([*base, "--compare-with", str(bundle_dir), "--json"], capsys)
    result = json.loads(out.strip().splitlines()[-1])
    same = result["compare_with"]
    assert code == 0 and same["auroc"] == pytest.approx(result["auroc"])
    assert same["change"] == same["ci_low"] == same["ci_high"] == 0.0 and same["draws"] == 1000
    # the same probe with its direction reversed ranks the dialogues backwards: a real, significant change
    bundle = load_bundle(bundle_dir, expected_fingerprint=tiny_loaded.fingerprint)
    tensors = {k: (-v if k in ("weight", "bias") else v) for k, v in bundle.tensors.items()}
    manifest = copy.deepcopy(bundle.manifest)
    manifest.weights_sha256, manifest.created_at = "", ""
    save_bundle(tmp_path / "reversed", manifest, tensors)
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed")], capsys)
    assert code == 0 and "vs " in out and "excludes zero" in out
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed"), "--json"], capsys)
    rev = json.loads(out.strip().splitlines()[-1])["compare_with"]
    assert rev["auroc"] < 0.5 < result["auroc"] and rev["change"] == pytest.approx(result["auroc"] - rev["auroc"])
    assert 0.0 < rev["ci_low"] <= rev["change"] <= rev["ci_high"]
    # what each AUROC is made of: the wrongly ordered pairs, and the dialogues in most of them
    pairs = result["n_pos"] * result["n_neg"]
    assert rev["misordered"]["before"] == pytest.approx((1 - rev["auroc"]) * pairs)
    assert rev["misordered"]["after"] == pytest.approx((1 - result["auroc"]) * pairs)
    texts = [json.loads(line)["messages"][-1]["content"] for line in data.read_text().splitlines()]
    for side in ("before", "after"):
        rows = rev["misranked"][side]
        assert len(rows) <= 5
        assert [r["pairs"] for r in rows] == sorted((r["pairs"] for r in rows), reverse=True)
        assert all(r["pairs"] > 0 and " ".join(texts[r["index"]].split()).startswith(r["text"]) for r in rows)
    assert len(rev["misranked"]["before"]) == 5  # reversed, nearly every pair is wrong
    worst = rev["misranked"]["before"][0]
    assert worst["pairs"] >= 0.9 * min(result["n_pos"], result["n_neg"])  # an average item is wrong in >= 90%
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed"), "--misranked", "0", "--json"], capsys)
    assert json.loads(out.strip().splitlines()[-1])["compare_with"]["misranked"] == {"before": [], "after": []}
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed")], capsys)
    assert f"of {pairs} pairs ordered wrongly, most by:" in out and f"#{worst['index']} " in out
    assert result["chosen_on"] == [] and rev["chosen_on"] == [] and "was chosen by its run on" not in out
    # a bundle its run chose on an out-of-distribution set (as the 2026-12-01 refusal bundle on refusal_val)
    report = json.loads((bundle_dir / "report.json").read_text())
    report["selection"] = {"basis": "ood", "chosen": {**report["selection"]["chosen"], "ood_auroc": {"held_val": 1.0}}}
    (tmp_path / "reversed" / "report.json").write_text(json.dumps(report))
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed"), "--json"], capsys)
    assert json.loads(out.strip().splitlines()[-1])["compare_with"]["chosen_on"] == ["held_val"]
    code, out, _ = _run([*base, "--compare-with", str(tmp_path / "reversed")], capsys)
    assert f"note: {rev['probe_id']} (--compare-with) was chosen by its run on held_val (the best of its sweep" in out


def test_eval_compare_with_refuses_one_class_data_and_a_missing_bundle(trained, tiny_folder, tmp_path, capsys):
    bundle_dir, data, _ = trained
    positives = tmp_path / "pos.jsonl"
    positives.write_text("".join(line + "\n" for line in data.read_text().splitlines() if '"label": 1' in line))
    args = ["eval", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--quiet"]
    code, _, err = _run([*args, "--data", str(positives), "--compare-with", str(bundle_dir)], capsys)
    assert code == 2 and "--compare-with" in err and "both labels" in err
    code, _, err = _run([*args, "--data", str(data), "--compare-with", str(tmp_path / "nope")], capsys)
    assert code == 2 and "nope" in err and "Traceback" not in err


def test_bad_jsonl_line_names_file_and_line(trained, tiny_folder, tmp_path, capsys):
    bundle_dir, data, control = trained
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    bad.write_text(
        "\n".join(lines[:2] + ['{"messages": [{"role": "user", "content": "t1"}], "label": 7}'] + lines[2:]) + "\n"
    )
    code, _, err = _run(["eval", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--data", str(bad)], capsys)
    assert code == 2 and f"{bad}:3" in err and "label" in err
    broken = tmp_path / "broken.jsonl"
    broken.write_text(lines[0] + "\n{not json\n")
    code, _, err = _run(
        [
            "train",
            "--behaviour",
            "deception",
            "--model",
            str(tiny_folder),
            "--data",
            str(broken),
            "--control",
            str(control),
            "--out",
            str(tmp_path / "b"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and f"{broken}:2" in err and "invalid JSON" in err and "Traceback" not in err


def test_wrong_model_for_a_bundle_is_refused(trained, other_tiny_folder, tmp_path, capsys):
    bundle_dir, data, control = trained
    other = str(other_tiny_folder)
    code, _, err = _run(["eval", "--bundle", str(bundle_dir), "--model", other, "--data", str(data)], capsys)
    assert code == 2 and "fingerprint" in err
    code, _, err = _run(
        [
            "train",
            "--init-from",
            str(bundle_dir),
            "--model",
            other,
            "--data",
            str(data),
            "--control",
            str(control),
            "--out",
            str(tmp_path / "new"),
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "refusing to update a bundle with another model" in err
    assert not (tmp_path / "new").exists()
    before = (bundle_dir / "weights.safetensors").read_bytes()
    code, _, err = _run(
        [
            "train",
            "--behaviour",
            "deception",
            "--model",
            other,
            "--data",
            str(data),
            "--control",
            str(control),
            "--out",
            str(bundle_dir),
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "Refusing to update a bundle with another model" in err
    assert (bundle_dir / "weights.safetensors").read_bytes() == before
    code, _, err = _run(
        [
            "calibrate",
            "--bundle",
            str(bundle_dir),
            "--model",
            other,
            "--control",
            str(control),
            "--out",
            str(tmp_path / "cal"),
        ],
        capsys,
    )
    assert code == 2 and "fingerprint" in err


def test_init_from_retrains_with_the_bundle_settings(trained, tiny_folder, tmp_path, capsys):
    bundle_dir, data, control = trained
    old = read_manifest(bundle_dir)
    out = tmp_path / "v2"
    code, stdout, err = _run(
        [
            "train",
            "--init-from",
            str(bundle_dir),
            "--model",
            str(tiny_folder),
            "--data",
            str(data),
            "--control",
            str(control),
            "--out",
            str(out),
            "--quiet",
            "--json",
        ],
        capsys,
    )
    assert code == 0, err
    new = read_manifest(out)
    assert (new.id, new.layer, new.kind, new.aggregation.method) == (
        old.id,
        old.layer,
        old.kind,
        old.aggregation.method,
    )
    assert new.version == str(int(old.version) + 1) and new.training["init_from"] == str(bundle_dir)
    assert json.loads(stdout.strip().splitlines()[-1])["layer"] == old.layer


def test_compare_with_prints_before_and_after_with_the_interval(trained, tiny_folder, tmp_path, capsys):
    """`--compare-with`: the summary gives the old bundle on this run's sets, the paired change and its interval;
    a path that is no bundle is reported, not fatal."""
    bundle_dir, data, control = trained
    args = ["train", "--behaviour", "deception", "--model", str(tiny_folder), "--data", str(data)]
    args += ["--control", str(control), "--out", str(tmp_path / "again"), "--quiet"]
    code, stdout, err = _run([*args, "--compare-with", str(bundle_dir), str(tmp_path / "nowhere")], capsys)
    assert code == 0, err
    compared = [line for line in stdout.splitlines() if line.startswith("compared")]
    report = json.loads((tmp_path / "again" / "report.json").read_text())
    test_now = report["metrics"]["auroc"]
    # the same data, seed and settings: the old bundle is this run's probe, so no change and a zero interval
    assert compared[0].startswith(f"compared   deception (layers {read_manifest(bundle_dir).layer}): ")
    assert f"test {test_now:.3f} -> {test_now:.3f} (+0.000 [+0.000, +0.000])" in compared[0]
    assert compared[1].startswith("compared   ") and "not scored (cannot load" in compared[1]


def test_calibrate_rethresholds_at_the_target_fpr(trained, tiny_folder, tmp_path, capsys):
    bundle_dir, _, control = trained
    out = tmp_path / "cal"
    code, stdout, err = _run(
        [
            "calibrate",
            "--bundle",
            str(bundle_dir),
            "--model",
            str(tiny_folder),
            "--control",
            str(control),
            "--fpr",
            "0.1",
            "--out",
            str(out),
            "--json",
            "--quiet",
        ],
        capsys,
    )
    assert code == 0, err
    m = read_manifest(out)
    assert m.threshold.fpr == 0.1 and m.threshold.n_calibration == 30 and m.threshold.calibration_set == "control.jsonl"
    assert m.extra["threshold_history"][-1]["value"] == read_manifest(bundle_dir).threshold.value
    assert m.threshold.method == "fpr" and m.extra["operating_point"]["set_by"] == "control"
    # the drift reference follows: the control set's 30 scores in quantile bins, ~10% at the new threshold
    ref = m.extra["calibration_reference"]
    assert ref["n"] == 30 and ref["calibration_set"] == "control.jsonl" and abs(sum(ref["fractions"]) - 1) < 1e-9
    assert 0.0 < ref["expected_alert_rate"] <= 0.2
    load_bundle(out)  # checksum still valid


def test_calibrate_with_hard_negatives_keeps_the_second_operating_point(trained, tiny_folder, tmp_path, capsys):
    """Your own look-alike negatives (here: the training data's negatives) raise the threshold until at most
    --hard-negative-fpr of them are flagged; a rate outside [0, 1) is a one-line error."""
    from probewatch.data.dialogue import load_dialogues, write_dialogues

    bundle_dir, data, control = trained
    hard = tmp_path / "hard.jsonl"
    write_dialogues(hard, [d for d in load_dialogues(data) if d.label == 0])
    out = tmp_path / "cal2"
    args = ["calibrate", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--control", str(control)]
    code, stdout, err = _run(
        [*args, "--hard-negatives", str(hard), "--hard-negative-fpr", "0.0", "--out", str(out), "--json", "--quiet"],
        capsys,
    )
    assert code == 0, err
    summary = json.loads(stdout.strip().splitlines()[-1])
    m = read_manifest(out)
    assert m.threshold.method == "fpr+hard_negatives" and m.extra["operating_point"]["hard_negatives"] == str(hard)
    assert summary["threshold"] == max(summary["control_threshold"], summary["hard_negative_threshold"])
    code, stdout, _ = _run(
        ["eval", "--bundle", str(out), "--model", str(tiny_folder), "--data", str(data), "--json", "--quiet"], capsys
    )
    assert code == 0 and json.loads(stdout.strip().splitlines()[-1])["fpr_at_bundle_threshold"] == 0.0
    code, _, err = _run([*args, "--hard-negatives", str(hard), "--hard-negative-fpr", "1.5", "--quiet"], capsys)
    assert code != 0 and "--hard-negative-fpr must be in [0, 1)" in err


def test_default_out_is_a_user_bundle_listed_by_probes_list(tiny_folder, tmp_path, capsys):
    data, control = write_synthetic(tmp_path, n_groups=12)
    code, _, err = _run(
        [
            "train",
            "--behaviour",
            "refusal",
            "--model",
            str(tiny_folder),
            "--data",
            str(data),
            "--control",
            str(control),
            "--method",
            "mean_diff",
            "--layers",
            "2",
            "--quiet",
            "--no-plots",
        ],
        capsys,
    )
    assert code == 0, err
    code, out, _ = _run(["probes", "list", "--json"], capsys)
    rows = json.loads(out.strip().splitlines()[-1])
    mine = [r for r in rows if r["source"] == "user"]
    assert len(mine) == 1 and mine[0]["id"] == "refusal-mean-diff" and mine[0]["kind"] == "mean_diff"
    assert mine[0]["layer"] == 2 and mine[0]["behaviour"] == "refusal" and Path(mine[0]["path"]).is_dir()


def test_unknown_layer_is_a_clear_error(tiny_folder, tmp_path, capsys):
    data, control = write_synthetic(tmp_path, n_groups=8)
    code, _, err = _run(
        [
            "train",
            "--behaviour",
            "deception",
            "--model",
            str(tiny_folder),
            "--data",
            str(data),
            "--control",
            str(control),
            "--layers",
            "9",
            "--quiet",
        ],
        capsys,
    )
    assert code == 2 and "out of range" in err


def _env(tmp_path: Path) -> dict:
    import os

    env = dict(os.environ)
    env["PROBEWATCH_HOME"] = str(tmp_path / "home")
    return env


def test_eval_scores_bare_assistant_transcripts(trained, tiny_folder, tmp_path, capsys):
    bundle_dir, _, _ = trained
    data = tmp_path / "transcripts.jsonl"
    lines = [
        {
            "messages": [{"role": "assistant", "content": f"Answer number {i} is {'true' if i % 2 else 'false'}."}],
            "label": i % 2,
        }
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, out, err = _run(
        ["eval", "--bundle", str(bundle_dir), "--model", str(tiny_folder), "--data", str(data), "--quiet", "--json"],
        capsys,
    )
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["n_pos"] == 4 and result["n_neg"] == 4 and 0.0 <= result["auroc"] <= 1.0


def test_train_cli_defaults_for_the_operating_point_are_calibrations_aims():
    """The CLI keeps literal defaults (importing the training stack at argument parsing would load numpy); a
    plain `probewatch train` builds the TrainConfig whose band and negatives targets are calibration's aims."""
    import argparse

    from probewatch.cli.train_cmd import add_train_arguments, config_from_args
    from probewatch.training.calibration import BAND_CONTROL_FPR, CONTROL_FPR, MAX_FLAGGED_NEGATIVES
    from probewatch.training.pipeline import TrainConfig

    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    config = config_from_args(parser.parse_args(["--behaviour", "deception"]))
    assert config.fpr == CONTROL_FPR == TrainConfig(behaviour="deception").fpr
    assert config.band_control_fpr == BAND_CONTROL_FPR == TrainConfig(behaviour="deception").band_control_fpr
    assert config.hard_negative_fpr == MAX_FLAGGED_NEGATIVES == TrainConfig(behaviour="deception").hard_negative_fpr
    assert config.hard_negatives_per_kind is TrainConfig(behaviour="deception").hard_negatives_per_kind is True
    pooled = parser.parse_args(["--behaviour", "deception", "--no-hard-negatives-per-kind"])
    assert config_from_args(pooled).hard_negatives_per_kind is False


def test_train_cli_offers_every_runtime_aggregation_and_behaviour():
    """The CLI keeps its own copies (importing the manifest module would load torch at argument parsing)."""
    from probewatch.behaviours import BEHAVIOURS, DEFAULT_PROBE_IDS, DESCRIPTIONS
    from probewatch.cli.train_cmd import AGGREGATIONS
    from probewatch.probes.manifest import AGGREGATIONS as RUNTIME_AGGREGATIONS

    # `attention` is the attention probe's own pooling, chosen with --method attention
    assert tuple(a for a in RUNTIME_AGGREGATIONS if a != "attention") == AGGREGATIONS
    assert set(DESCRIPTIONS) == set(BEHAVIOURS) == set(DEFAULT_PROBE_IDS)
    assert {"eval_awareness", "monitored_framing"} <= set(BEHAVIOURS)


def test_train_cli_offers_every_method_and_auto_leaves_contrast_out():
    """The CLI's method names are the trainer's (its own copy, as above); `auto` is every method but contrast."""
    import argparse

    from probewatch.cli.train_cmd import METHODS, add_train_arguments, config_from_args
    from probewatch.training.estimators import KIND_BY_METHOD
    from probewatch.training.train_config import DEFAULT_METHODS
    from probewatch.training.train_config import METHODS as TRAINING_METHODS

    assert METHODS == TRAINING_METHODS and set(METHODS) == set(KIND_BY_METHOD)
    assert set(METHODS) - set(DEFAULT_METHODS) == {"contrast"}
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert tuple(config_from_args(parser.parse_args(["--behaviour", "deception"])).methods) == DEFAULT_METHODS
    chosen = config_from_args(parser.parse_args(["--behaviour", "deception", "--method", "logistic,contrast"]))
    assert list(chosen.methods) == ["logistic", "contrast"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--behaviour", "deception", "--method", "pairs"])


def test_selection_margin_flag_reaches_the_fold_settings_and_the_rule_text():
    """`--selection-margin` sets the guard of the held-out-source choice (its default is the trainer's, held
    equal here like the method names); `inf` turns it off and the rule the report states says so; a negative
    margin is refused with the flag's name."""
    import argparse
    import math

    from probewatch.cli.train_cmd import SELECTION_MARGIN, add_train_arguments, config_from_args
    from probewatch.training.report_sources import VAL_MARGIN, rule_text
    from probewatch.training.stage_sources import settings_of
    from probewatch.training.train_config import TrainingError, check_config

    assert SELECTION_MARGIN == VAL_MARGIN
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    default = config_from_args(parser.parse_args(["--behaviour", "deception"]))
    assert default.selection_margin == VAL_MARGIN and settings_of(default).val_margin == VAL_MARGIN
    wide = config_from_args(parser.parse_args(["--behaviour", "deception", "--selection-margin", "0.25"]))
    assert settings_of(wide).val_margin == 0.25 and "within 0.25 of the best candidate's" in rule_text(0.25)
    off = config_from_args(parser.parse_args(["--behaviour", "deception", "--selection-margin", "inf"]))
    assert math.isinf(settings_of(off).val_margin)
    assert rule_text(math.inf).startswith("rank by the worst held-out fold")  # no guard clause
    negative = config_from_args(parser.parse_args(["--behaviour", "deception", "--selection-margin", "-0.1"]))
    with pytest.raises(TrainingError, match="--selection-margin must be >= 0"):
        check_config(negative, 4, "tiny")


def test_c_grid_flag_sets_the_sweep_grid_the_report_records_it_and_bad_grids_are_refused(
    trained, tiny_folder, tmp_path, monkeypatch, capsys
):
    """`--c-grid` replaces the C values the held-out-kind sweep tries (default: the trainer's, held equal here);
    the report records the grid (so `bench selection` replays with it) and every swept C is from it; a
    grid with a non-positive or non-numeric value is refused by the parser with the flag's name."""
    import argparse

    from probewatch.cli.train_cmd import C_GRID, add_train_arguments, config_from_args
    from probewatch.training.train_config import HELDOUT_CS, TrainConfig, TrainingError, check_config

    assert C_GRID == HELDOUT_CS
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    assert tuple(config_from_args(parser.parse_args(["--behaviour", "deception"])).heldout_Cs) == HELDOUT_CS
    parsed = parser.parse_args(["--behaviour", "deception", "--c-grid", "1,0.1,0.1"])
    assert tuple(config_from_args(parsed).heldout_Cs) == (0.1, 1.0)  # sorted, duplicates dropped
    for bad in ("0,0.1", "-1", "0.1,abc", "inf", ","):
        with pytest.raises(SystemExit):
            parser.parse_args(["--behaviour", "deception", "--c-grid", bad])
        assert "--c-grid" in capsys.readouterr().err

    with pytest.raises(TrainingError, match="--c-grid values must be positive"):
        check_config(TrainConfig(behaviour="deception", heldout_Cs=(0.1, 0.0)), 4, "tiny")  # the Python API too

    default_report = json.loads((trained[0] / "report.json").read_text())
    assert default_report["config"]["heldout_Cs"] == list(HELDOUT_CS)
    _, data, control = trained
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    out = tmp_path / "grid"
    args = ["train", "--behaviour", "deception", "--model", str(tiny_folder), "--data", str(data)]
    args += ["--control", str(control), "--out", str(out), "--method", "logistic", "--layers", "1,3"]
    args += ["--c-grid", "0.5,2", "--multi-layer", "0", "--nested-top-k", "0", "--no-plots", "--quiet", "--json"]
    assert main(args) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["selection"]["basis"] == "heldout_kind" and report["config"]["heldout_Cs"] == [0.5, 2.0]
    swept = {row["C"] for row in report["sweep"]}
    assert swept and swept <= {0.5, 2.0} and report["selection"]["chosen"]["C"] in (0.5, 2.0)


def test_summary_names_every_layer_a_multi_layer_bundle_reads(capsys):
    """The train summary of a concatenated probe lists its layers, as the bundle's manifest does."""
    from probewatch.bundle_index import shipped_root
    from probewatch.cli.train_cmd import print_summary, summarize

    for folder in sorted(p.parent for p in shipped_root().glob("*/*/report.json")):
        report = json.loads((folder / "report.json").read_text())
        layers = read_manifest(folder).all_layers
        summary = summarize(report)
        assert summary["layers"] == list(layers), folder.name
        print_summary(summary)
        probe_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("probe "))
        reads = f"layers {'+'.join(map(str, layers))}," if len(layers) > 1 else f"layer {layers[0]},"
        assert probe_line.split(None, 1)[1].startswith(reads), probe_line
