"""Shipping a multi-layer probe: the decision rule (concat only where it beats the single-layer choice on
held-out kinds by more than 0.01, or on every one of at least five kinds; and on held-out sources where they
chose the single probe), the layers' rows side by side,
and `probewatch train` writing a bundle that reads several layers, whose live-path parity check
(score_dialogues, summing the layers) holds."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest

from probewatch.benchmarks import selection as bench_selection
from probewatch.probes import ProbeRuntime, load_bundle
from probewatch.training import multilayer
from probewatch.training.features import LayerData
from probewatch.training.multilayer import concat_layer_data, concat_row, ship_concat
from probewatch.training.multilayer_sources import REPLAYED_BY, SourceCheck
from probewatch.training.pipeline import TrainConfig, train
from probewatch.training.quality_doc import RunInfo, render_markdown
from probewatch.training.replay import record_concat_check
from probewatch.training.report_sources import ConfigScore
from probewatch.training.stage_sweep import SweepOutcome
from probewatch.training.sweep import SweepRow
from tests.training.helpers import write_synthetic, write_two_sources

RUN = RunInfo("tiny-model", "pwfp1:" + "0" * 32, 4, 64, 90.0, "2026-12-01 00:00 UTC", 2, "x86_64")


def _row(heldout: float | None) -> SweepRow:
    return SweepRow("response", 2, "mean_diff", True, "max", 0.9, heldout, C=None)


def _multi(concat: float | None) -> dict:
    return {
        "layers": [1, 3],
        "C": 0.5,
        "token_selection": "response",
        "concat": {"val_auroc": 0.95, "heldout_kind_auroc": concat, "heldout_per_kind": {"a": 0.9}},
        "ensemble": {"val_auroc": 0.9, "heldout_kind_auroc": 0.8, "heldout_per_kind": {}},
    }


@pytest.mark.parametrize(
    ("concat", "single", "ships"),
    [(0.811, 0.80, True), (0.81, 0.80, False), (0.79, 0.80, False), (None, 0.80, False), (0.9, None, False)],
)
def test_concat_ships_only_beyond_the_margin(concat, single, ships):
    assert ship_concat(_multi(concat), _row(single)) is ships
    assert ship_concat(None, _row(single)) is False


def test_the_held_out_source_check_decides_over_a_contrast_choice():
    """A contrast probe is chosen by held-out source for a transfer held-out kinds do not see: the concat's
    held-out-kind win is only half the decision, and the held-out-source check (multilayer_sources) has the
    last word; without a source choice the held-out-kind rule decides alone."""
    contrast = SweepRow("response", 2, "contrast", False, "mean", 0.9, 0.80, C=0.01)
    assert ship_concat(_multi(0.95), contrast) is True

    def sweep() -> SweepOutcome:
        return SweepOutcome([contrast], contrast, "heldout_source", _multi(0.95))

    def check(holds: bool) -> SourceCheck:
        single = ConfigScore({"layer": 2}, 0.70, 0.60, {"s1": 0.60, "s2": 0.80})
        concat = ConfigScore({"layers": [1, 3]}, 0.75, 0.65 if holds else 0.50, {})
        return SourceCheck(single, concat, holds)

    for holds, layers in ((False, None), (True, [1, 3])):
        outcome = sweep()
        _, got = multilayer.choose_layers(outcome, object(), lambda multi, chosen, h=holds: check(h))
        assert got == layers and outcome.multi_layer["shipped"] is holds
        assert outcome.multi_layer["heldout_source"]["holds"] is holds
        assert outcome.multi_layer["heldout_source"]["concat"]["worst"] == (0.65 if holds else 0.50)
        assert (outcome.chosen.method == "logistic") is holds  # the concat row replaces the contrast choice only then
    outcome = sweep()
    _, got = multilayer.choose_layers(outcome, object(), lambda multi, chosen: None)  # no source choice was made
    assert got == [1, 3] and "heldout_source" not in outcome.multi_layer


def test_concat_does_not_ship_when_it_costs_the_worst_kind():
    single = SweepRow("response", 2, "mean_diff", True, "max", 0.9, 0.80, {"a": 0.95, "b": 0.65}, C=None)
    better_mean_worse_worst = _multi(0.85) | {
        "concat": {"heldout_kind_auroc": 0.85, "heldout_per_kind": {"a": 1.0, "b": 0.6}}
    }
    assert ship_concat(better_mean_worse_worst, single) is False
    holds_worst = _multi(0.85) | {"concat": {"heldout_kind_auroc": 0.85, "heldout_per_kind": {"a": 1.0, "b": 0.645}}}
    assert ship_concat(holds_worst, single) is True


def _kinds(values: list[float]) -> dict[str, float]:
    return {f"k{i}": v for i, v in enumerate(values)}


def test_concat_near_the_ceiling_ships_when_better_on_every_kind():
    """Refusal's case: +0.008 on the mean (under the 0.01 margin) but better on each of 8 kinds."""
    single_kinds = _kinds([0.979, 0.968, 0.969, 0.987, 0.997, 0.994, 0.980, 0.998])
    concat_kinds = _kinds([0.989, 0.987, 0.972, 0.995, 0.9995, 0.997, 0.997, 0.9986])
    single = SweepRow(
        "prompt_last",
        19,
        "logistic",
        False,
        "last",
        0.99,
        float(np.mean(list(single_kinds.values()))),
        single_kinds,
        C=1.0,
    )
    concat_mean = float(np.mean(list(concat_kinds.values())))
    assert concat_mean - single.heldout_kind_auroc < multilayer.SHIP_MARGIN
    multi = _multi(concat_mean) | {"concat": {"heldout_kind_auroc": concat_mean, "heldout_per_kind": concat_kinds}}
    assert ship_concat(multi, single) is True
    # one kind not better: the margin rule decides. Near the ceiling the margin is a third of the error left
    # (single 0.984: 0.0053), so +0.0084 ships and +0.004 does not
    tied = concat_kinds | {"k2": single_kinds["k2"]}
    tied_mean = float(np.mean(list(tied.values())))
    multi_tied = _multi(tied_mean) | {"concat": {"heldout_kind_auroc": tied_mean, "heldout_per_kind": tied}}
    assert tied_mean - single.heldout_kind_auroc > multilayer.ERROR_SHARE * (1 - single.heldout_kind_auroc)
    assert ship_concat(multi_tied, single) is True
    small = single_kinds | {"k0": 0.995, "k1": 0.9785}  # +0.004 on the mean, k2..k7 tied
    small_mean = float(np.mean(list(small.values())))
    multi_small = _multi(small_mean) | {"concat": {"heldout_kind_auroc": small_mean, "heldout_per_kind": small}}
    assert ship_concat(multi_small, single) is False
    # better everywhere but on too few kinds to be evidence
    few = SweepRow("prompt_last", 19, "logistic", False, "last", 0.99, 0.97, _kinds([0.96, 0.97, 0.98]), C=1.0)
    multi_few = _multi(0.975) | {
        "concat": {"heldout_kind_auroc": 0.975, "heldout_per_kind": _kinds([0.965, 0.975, 0.985])}
    }
    assert ship_concat(multi_few, few) is False
    # a kind the concat measurement lacks is not "better"; a mean under the margin then decides
    missing = {k: v for k, v in small.items() if k != "k0"}
    multi_missing = _multi(small_mean) | {"concat": {"heldout_kind_auroc": small_mean, "heldout_per_kind": missing}}
    assert ship_concat(multi_missing, single) is False


def test_concat_row_is_the_measured_probe():
    row = concat_row(_multi(0.9), _row(0.8))
    assert (row.layer, row.method, row.per_token, row.aggregation, row.C) == (1, "logistic", False, "mean", 0.5)
    assert row.heldout_kind_auroc == 0.9 and row.token_selection == "response"


def test_concat_layer_data_puts_layers_side_by_side():
    offsets = np.array([0, 2, 5])
    parts = [
        LayerData(layer, np.full((5, 3), layer, np.float32), offsets, np.full((2, 3), -layer, np.float32))
        for layer in (1, 3)
    ]
    joined = concat_layer_data(parts)
    assert joined.layer == 1 and joined.rows.shape == (5, 6) and joined.last.shape == (2, 6)
    assert joined.rows[0].tolist() == [1, 1, 1, 3, 3, 3] and joined.rest_sum is None
    with pytest.raises(ValueError, match="different token rows"):
        concat_layer_data([parts[0], LayerData(3, np.zeros((4, 3), np.float32), np.array([0, 2, 4]), parts[1].last)])


def test_train_ships_a_multi_layer_bundle_where_concat_wins(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(multilayer, "SHIP_MARGIN", -1.0)  # any concat "wins": the shipping path runs
    monkeypatch.setattr(multilayer, "WORST_MARGIN", 1.0)
    data, control = write_synthetic(tmp_path, n_groups=24)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            layers=[1, 3],
            out=tmp_path / "b",
            progress=False,
            plots=False,
            multi_layer=2,
            parity_check=4,
        ),
        loaded=tiny_loaded,
    )
    report = result.report
    assert report.multi_layer is not None and report.multi_layer["shipped"] is True
    assert report.chosen["layer"] == 1 and report.chosen["method"] == "logistic"
    bundle = load_bundle(result.bundle_path, expected_fingerprint=tiny_loaded.fingerprint)
    m = bundle.manifest
    assert m.layers == [1, 3] and m.layer == 1 and m.hook_names[1] == "blocks.3.hook_resid_post"
    assert bundle.tensors["weight"].numel() == 2 * tiny_loaded.d_model
    assert "layers 1, 3 (summed per token)" in m.description
    assert ProbeRuntime([bundle]).layers == [1, 3]
    # stage 6 scored test dialogues through score_dialogues (every layer, summed) == the cached concat scores
    assert report.parity is not None and report.parity.n == 4 and report.parity.max_abs_diff < 1e-3


def test_train_keeps_one_layer_where_concat_does_not_win(tiny_loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(multilayer, "SHIP_MARGIN", 2.0)  # no AUROC gain can exceed 2
    data, control = write_synthetic(tmp_path, n_groups=24)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            layers=[1, 3],
            out=tmp_path / "b",
            progress=False,
            plots=False,
            multi_layer=2,
            parity_check=0,
        ),
        loaded=tiny_loaded,
    )
    assert result.report.multi_layer is not None and result.report.multi_layer["shipped"] is False
    m = load_bundle(result.bundle_path).manifest
    assert m.layers is None and m.all_layers == [result.report.chosen["layer"]]


def _two_sources_kind_gate_open(tiny_loaded, tmp_path, monkeypatch, **extra):
    """A real tiny run on two sources (layers 1 and 3, a multi-layer comparison) with the concat's held-out-kind
    gate forced open, so the held-out-source halves of the decision are what decides."""
    monkeypatch.setattr(multilayer, "SHIP_MARGIN", -1.0)
    monkeypatch.setattr(multilayer, "WORST_MARGIN", 1.0)
    a, b, control = write_two_sources(tmp_path)
    config = TrainConfig(
        behaviour="deception",
        data_files=[a, b],
        control_file=control,
        layers=[1, 3],
        methods=["logistic"],
        out=tmp_path / "bundle",
        progress=False,
        plots=False,
        multi_layer=2,
        nested_top_k=2,
        parity_check=0,
        **extra,
    )
    return train(config, loaded=tiny_loaded)


def test_train_with_two_sources_judges_the_concat_on_held_out_sources_and_the_replay_agrees(
    tiny_loaded, tiny_folder, tmp_path, monkeypatch
):
    """With two data files the single-layer probe is chosen by held-out source, so the concat's held-out-kind
    win (forced here) is only half the decision: `choose_layers` fits the concat on the same source folds, ships
    it only where the held-out-source rule prefers it, and report.json keeps both probes' fold scores;
    `probewatch bench selection` (training/replay.py) replays the same decision from the report, and with
    `--record` writes it into a report whose run predates the check, which docs/quality.md then shows."""
    from probewatch.training.replay import replay_selection

    result = _two_sources_kind_gate_open(tiny_loaded, tmp_path, monkeypatch)
    report = result.report
    multi, selection = report.multi_layer, report.sources.selection
    assert multi is not None and selection is not None and selection.basis == "heldout_source"
    check = multi["heldout_source"]
    assert check["single"]["config"] == selection.chosen.config and check["single"]["mean"] == selection.chosen.mean
    assert check["concat"]["config"]["layers"] == [1, 3] and check["concat"]["config"]["method"] == "logistic"
    assert set(check["concat"]["folds"]) == set(check["single"]["folds"]) == {"written.jsonl", "public.jsonl"}
    concat = check["concat"]
    assert multi["shipped"] is check["holds"] is False  # before the check it shipped
    assert concat["worst"] < check["single"]["worst"] - 0.01  # it loses both sources here
    assert set(check["losses"]) == {"written.jsonl", "public.jsonl"}
    for name, (change, low, high) in check["losses"].items():
        assert change == pytest.approx(concat["folds"][name] - check["single"]["folds"][name]) and low <= change <= high
    manifest = load_bundle(result.bundle_path).manifest
    assert manifest.all_layers == ([1, 3] if multi["shipped"] else [selection.chosen.config["layer"]])

    replay = replay_selection(json.loads(result.report_path.read_text()), tiny_loaded)
    assert not replay.changed and replay.concat_recorded is multi["shipped"] and replay.concat_now is multi["shipped"]
    assert replay.concat_check is not None
    assert replay.concat_check.concat.folds == pytest.approx(concat["folds"], abs=1e-9)

    # a report written before the check: `bench selection --record` adds the replayed one, naming the command
    older = json.loads(result.report_path.read_text())
    own = older["multi_layer"].pop("heldout_source")
    stale = tmp_path / "older.json"
    stale.write_text(json.dumps(older))
    parser = argparse.ArgumentParser()
    bench_selection.add_cli_args(parser)
    args = ["--model", str(tiny_folder), "--report", str(stale), "--out", str(tmp_path / "out.json"), "--record"]
    assert bench_selection.main(parser.parse_args(args)) == 0
    recorded = json.loads(stale.read_text())
    check = recorded["multi_layer"]["heldout_source"]
    assert check["holds"] is own["holds"] and check["concat"]["config"] == own["concat"]["config"]
    assert check["concat"]["folds"] == pytest.approx(own["concat"]["folds"], abs=1e-9)
    assert recorded["multi_layer"][REPLAYED_BY].startswith("probewatch bench selection")
    added = ("heldout_source", REPLAYED_BY)  # nothing else in the report changes
    assert {k: v for k, v in recorded["multi_layer"].items() if k not in added} == older["multi_layer"]
    assert {k: v for k, v in recorded.items() if k != "multi_layer"} == {
        k: v for k, v in older.items() if k != "multi_layer"
    }
    out = json.loads((tmp_path / "out.json").read_text())["replays"][0]
    assert out["check_recorded"] is True and out["changed"] is False
    doc = render_markdown({"deception": recorded}, {}, RUN)
    replayed = (
        f"(replayed after the run by `{recorded['multi_layer'][REPLAYED_BY]}`: its sweep's candidates on its pool"
    )
    assert replayed in doc and f"concatenated {check['concat']['mean']:.3f} / {check['concat']['worst']:.3f}" in doc
    assert "replayed after the run" not in render_markdown(
        {"deception": json.loads(result.report_path.read_text())}, {}, RUN
    )

    again = json.loads(stale.read_text())
    assert not record_concat_check(again, replay, "probewatch bench selection --record")  # one check per report
    assert again == recorded
    own_run = json.loads(result.report_path.read_text())  # a run that made the check keeps its own
    assert not record_concat_check(own_run, replay, "x") and REPLAYED_BY not in own_run["multi_layer"]
    changed = json.loads(json.dumps(older))  # a record today's code cannot reproduce: the bench refuses to fill it
    changed["sources"]["selection"]["chosen"]["config"]["layer"] += 100
    stale.write_text(json.dumps(changed))
    assert bench_selection.main(parser.parse_args(args)) == 1
    assert json.loads(stale.read_text()) == changed  # nothing written
    out = json.loads((tmp_path / "out.json").read_text())["replays"][0]
    assert out["changed"] is True and out["check_recorded"] is False
    disagrees = dataclasses.replace(replay, concat_recorded=not replay.concat_now)  # today's rule decides otherwise
    older["multi_layer"].pop(REPLAYED_BY, None)
    with pytest.raises(ValueError, match="chooses differently from the run"):
        record_concat_check(older, disagrees, "probewatch bench selection --record")
    assert "heldout_source" not in older["multi_layer"]


def test_the_nested_estimate_decides_the_multi_layer_step_without_each_source(
    tiny_loaded, tiny_folder, tmp_path, monkeypatch
):
    """training/nested_multilayer.py inside `probewatch train`: with the kind gate forced open, each held-out
    source's step fits the concat against that source's single-layer choice on its inner folds (the other
    source's kinds) and scores what would ship; docs/quality.md shows it; `probewatch bench selection --nested`
    replays the same step, and with `--record` adds it to a report written before it, naming the command."""
    from probewatch.training.report import TrainReport

    result = _two_sources_kind_gate_open(tiny_loaded, tmp_path, monkeypatch, family=False)
    nested = result.report.sources.nested
    step = nested.multi_layer
    assert step is not None and step.layers == [1, 3] and step.replayed_by is None
    assert set(step.outer) == set(nested.outer) == {"written.jsonl", "public.jsonl"}
    for name, o in step.outer.items():
        assert o.kind_gate and o.layers == [1, 3]  # forced open: the source gate decides
        assert o.single == nested.outer[name].selection.chosen and o.single.folds.keys() == o.concat.folds.keys()
        assert o.concat is not None and o.concat.config["layers"] == [1, 3] and name not in o.concat.folds
        assert o.single_auroc == nested.outer[name].auroc
        assert (o.auroc != o.single_auroc) if o.ships else (o.auroc == o.single_auroc)
    assert step.mean == pytest.approx(np.mean([o.auroc for o in step.outer.values()]))
    assert step.change == pytest.approx(step.mean - nested.mean)

    raw = json.loads(result.report_path.read_text())
    assert "replayed_by" not in raw["sources"]["nested"]["multi_layer"]
    doc = render_markdown({"deception": raw}, {}, RUN)
    section = doc.split("### The multi-layer step, nested")[1].split("\n## ")[0]
    for name, o in step.outer.items():
        row = next(line for line in section.splitlines() if line.startswith(f"| `deception` | {name} |"))
        assert f"| {o.single_auroc:.3f} | 1+3: holds | {o.concat.mean:.3f} / {o.concat.worst:.3f} vs " in row
        assert row.endswith(f"| {'concat' if o.ships else 'one layer'} | {o.auroc:.3f} |")
    summary = next(line for line in section.splitlines() if "**mean over sources**" in line)
    assert f"**{step.mean:.3f}** (change {step.change:+.3f}" in summary and "added by" not in summary

    older = json.loads(json.dumps(raw))  # a report written before the step
    del older["sources"]["nested"]["multi_layer"]
    assert TrainReport.from_json(older).to_json() == older  # reads back without it, byte for byte
    both = render_markdown({"deception": raw, "old": {**older, "probe_id": "old"}}, {}, RUN)
    missing = both.split("### The multi-layer step, nested")[1].split("\n## ")[0]
    assert "| `old` | — (the run predates the step; `probewatch bench selection --nested --record` adds it" in missing
    assert "### The multi-layer step" not in render_markdown({"old": older}, {}, RUN)  # no step anywhere: no table
    stale = tmp_path / "older.json"
    stale.write_text(json.dumps(older))
    parser = argparse.ArgumentParser()
    bench_selection.add_cli_args(parser)
    args = ["--model", str(tiny_folder), "--report", str(stale), "--out", str(tmp_path / "out.json"), "--nested"]
    assert bench_selection.main(parser.parse_args(args + ["--record"])) == 0
    recorded = json.loads(stale.read_text())
    replayed = recorded["sources"]["nested"].pop("multi_layer")
    assert replayed.pop("replayed_by").startswith("probewatch bench selection")
    assert replayed["layers"] == [1, 3] and replayed["mean"] == pytest.approx(step.mean, abs=1e-9)
    for name, o in step.outer.items():
        assert replayed["outer"][name]["ships"] is o.ships
        assert replayed["outer"][name]["auroc"] == pytest.approx(o.auroc, abs=1e-9)
    assert recorded == older  # nothing else in the report changes
    out = json.loads((tmp_path / "out.json").read_text())["replays"][0]
    assert out["nested_recorded"] is True and out["nested"]["multi_layer"]["layers"] == [1, 3]

    # a report whose estimate today's pool no longer reproduces (here: the run recorded another AUROC for one
    # source): `--nested --record` refuses to extend it, writes the replay beside it, and docs/quality.md shows both
    departs = json.loads(json.dumps(older))
    moved = sorted(step.outer)[0]
    departs["sources"]["nested"]["outer"][moved]["auroc"] += 0.05
    stale.write_text(json.dumps(departs))
    assert bench_selection.main(parser.parse_args(args + ["--record"])) == 1  # the step is refused
    drifted = json.loads(stale.read_text())
    record = drifted["sources"]["nested"].pop("replayed")
    assert drifted == departs  # the run's estimate, untouched, and nothing else
    assert record["by"].startswith("probewatch bench selection") and record["differences"][0].startswith(f"{moved}: ")
    assert record["mean"] == pytest.approx(nested.mean, abs=1e-9)
    assert record["multi_layer_mean"] == pytest.approx(step.mean, abs=1e-9)
    assert json.loads((tmp_path / "out.json").read_text())["replays"][0]["drift"] == "recorded"
    shown = {"deception": json.loads(stale.read_text()), "new": {**raw, "probe_id": "new"}}  # "new" has a step
    doc = render_markdown(shown, {}, RUN)
    heldout = doc.split("## Held-out sources: the nested estimate")[1].split("### The multi-layer step")[0]
    row = next(line for line in heldout.splitlines() if line.startswith(f"| `deception` | {moved} |"))
    assert f"| {departs['sources']['nested']['outer'][moved]['auroc']:.3f} (replayed on today's pool: " in row
    assert f"today's pool: {nested.outer[moved].auroc:.3f})" in row
    summary = next(line for line in heldout.splitlines() if "**mean over sources**" in line)
    assert f"; replayed on today's pool ({record['on']}): **{nested.mean:.3f}**" in summary
    assert f"with the multi-layer step {step.mean:.3f}): the run's estimate no longer reproduces" in summary
    step_table = doc.split("### The multi-layer step, nested")[1].split("\n## ")[0]
    assert f"the replay of {record['on']} does not: the table above)" in step_table
    assert f"| replayed on today's pool: {step.mean:.3f} (single layer there {nested.mean:.3f}, change " in step_table
    for name, o in step.outer.items():  # the replay's step per source, its searched set beside its gate
        row = next(line for line in step_table.splitlines() if f"| {name} (replayed on today's pool) |" in line)
        assert f"| {o.single_auroc:.3f} | 1+3: holds |" in row and row.endswith(f"| {o.auroc:.3f} |")

    stale.write_text(
        json.dumps(
            {**older, "sources": {**older["sources"], "nested": {**older["sources"]["nested"], "replayed": record}}}
        )
    )
    assert bench_selection.main(parser.parse_args(args + ["--record"])) == 0  # reproduces again: the record goes
    cleared = json.loads(stale.read_text())
    assert "replayed" not in cleared["sources"]["nested"] and "multi_layer" in cleared["sources"]["nested"]
    assert json.loads((tmp_path / "out.json").read_text())["replays"][0]["drift"] == "cleared"
