"""The multi-layer step inside the nested estimate (training/nested_multilayer.py), on the synthetic pool of
test_multilayer_sources: layer 0 reads the label on one direction in sources a, b, c and on another in d;
layers 1 and 2 read it weakly, each on its own direction, in every source."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import pytest

from probewatch.training.nested import NestedSettings, nested_estimate
from probewatch.training.nested_multilayer import multilayer_step
from probewatch.training.replay import Replay, record_nested_additions, record_replay_drift
from probewatch.training.report_sources import NestedEstimate, drop_unset
from tests.training.test_multilayer_sources import SETTINGS, _multi, three_layer_pool
from tests.training.test_nested_sources import SOURCES, _row

CONTROL_HELD = np.arange(1, 40, 2)


@pytest.fixture(scope="module")
def three_layers():
    return three_layer_pool()


def _estimate(pool, layer_data, cal, rows, settings: NestedSettings = SETTINGS) -> NestedEstimate:
    nested = nested_estimate(rows, pool, layer_data, cal, CONTROL_HELD, settings, (0.9, "heldout_source"), 0.9)
    assert nested is not None
    return nested


def _step(multi, rows, nested, pool, layer_data, cal):
    return multilayer_step(multi, rows, nested, pool, layer_data, cal, CONTROL_HELD, SETTINGS)


def test_a_concat_that_reads_more_on_every_source_ships_without_each_and_raises_the_estimate(three_layers):
    """Layers 1 and 2 carry the label on two directions everywhere: without each source the concat wins the
    inner folds, is fitted on the other sources and scores higher on the held-out one than layer 1 alone."""
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    step = _step(_multi([1, 2]), rows, nested, pool, layer_data, cal)
    assert step is not None and step.layers == [1, 2] and set(step.outer) == set(SOURCES)
    for name, o in step.outer.items():
        assert o.kind_gate and o.ships
        assert o.single == nested.outer[name].selection.chosen  # the estimate's own inner-fold scores
        assert o.concat is not None and o.concat.config["layers"] == [1, 2]
        assert set(o.concat.folds) == set(SOURCES) - {name}  # judged without the held-out source
        assert o.concat.worst > o.single.worst
        assert o.single_auroc == nested.outer[name].auroc and o.auroc > o.single_auroc
    assert step.mean == pytest.approx(np.mean([o.auroc for o in step.outer.values()]))
    assert step.change == pytest.approx(step.mean - nested.mean) and step.change > 0.03
    assert step.worst == min(o.auroc for o in step.outer.values())
    assert step.worst_source is not None and step.outer[step.worst_source].auroc == step.worst


def test_the_step_shows_what_a_concat_chosen_on_the_other_sources_costs_on_a_shifted_one(three_layers):
    """Adding layer 0 (the a/b/c direction) to layer 1: held out a, b or c, the inner folds hold d, where the
    concat loses, so the rule keeps one layer and the source keeps its single-layer AUROC. Held out d, the
    inner folds are a, b, c, where the concat wins: it ships and reads noise on d. The estimate with the step
    is lower than without it: the step's own optimism, which the single-layer estimate cannot show."""
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    step = _step(_multi([0, 1]), rows, nested, pool, layer_data, cal)
    assert step is not None
    for name in ("a", "b", "c"):
        o = step.outer[name]
        assert o.kind_gate and not o.ships and o.auroc == o.single_auroc
        assert o.concat is not None and o.concat.folds["d"] < o.single.folds["d"] - 0.01
    d = step.outer["d"]
    assert d.ships and d.concat is not None and d.concat.worst > d.single.worst
    assert d.auroc < d.single_auroc - 0.03
    assert step.change < 0 and step.worst_source == "d"


def _with_d_only_layer(three_layers):
    """The three-layer pool with a layer 3 that is layer 1 again, plus the label on its own direction in source d's
    rows: joined to layer 1 it adds the label in d and nothing new in a, b, c."""
    from probewatch.training.features import LayerData

    pool, layer_data, cal = three_layers
    first = layer_data(1)[0]
    x3 = first.last.copy()  # layer 1 again (nothing new to a probe that has layer 1) ...
    x3[:, 4] += np.where(pool.sources == "d", 2.5, 0.0) * np.where(pool.labels == 1, 1.0, -1.0)  # ... but in d
    rows = first.rows + np.repeat(x3 - first.last, 2, axis=0)
    third = LayerData(3, rows, first.offsets, x3)

    def data(layer: int):
        return (third, layer_data(0)[1]) if layer == 3 else layer_data(layer)

    return pool, data, cal


def test_the_layer_set_is_searched_without_each_held_out_source(three_layers, monkeypatch):
    """Layer 3 adds the label in d's rows only; layer 2 reads it everywhere. Held out a, b or c, the search's
    held-out kinds include d's, where adding layer 3 helps, so their sets hold it; held out d, the other sources'
    kinds never show layer 3 helping and d's set lacks it, though the run's search (which read d's kinds) found
    1+3. The set a source is scored with is never searched on that source. (The worst-kind margin is lifted: on
    48 + 48 items per kind, refitting with layer 3 costs c1 0.05.)"""
    from probewatch.training import multilayer

    monkeypatch.setattr(multilayer, "WORST_MARGIN", 1.0)
    pool, layer_data, cal = _with_d_only_layer(three_layers)
    rows = [_row(1, 0.80), _row(2, 0.70), _row(3, 0.60)]
    nested = _estimate(pool, layer_data, cal, rows)
    step = _step(_multi([1, 3]), rows, nested, pool, layer_data, cal)
    assert step is not None and step.layers == [1, 3]  # the run's set
    found = {name: o.layers for name, o in step.outer.items()}
    assert all(layers is not None and len(layers) >= 2 for layers in found.values()), found
    assert 3 not in found["d"] and all(3 in found[name] for name in "abc"), found
    assert all(o.single_auroc == nested.outer[n].auroc for n, o in step.outer.items())
    for o in step.outer.values():
        assert (o.auroc != o.single_auroc) if o.ships else (o.auroc == o.single_auroc)
        assert o.concat is None or o.concat.config["layers"] == o.layers


def test_the_search_reads_the_sweeps_candidate_layers_up_to_the_runs_count(three_layers):
    """Candidates are the sweep's per-example logistic layers on the comparison's token selection, beside the run's
    set; a source's set never holds more than the run's `multi_layer` layers."""
    from dataclasses import replace

    from probewatch.training.nested_multilayer import search_candidates

    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80), _row(2, 0.70), replace(_row(0, 0.9), per_token=True), _row(0, 0.9, aggregation="max")]
    assert search_candidates(rows, _multi([1, 2])) == [1, 2]  # per-token and max rows are not the concat's kind
    assert search_candidates(rows[:1], _multi([0, 1])) == [0, 1]  # the run's set is always a candidate
    assert search_candidates([_row(2, 0.7)], {**_multi([0, 1]), "token_selection": "prompt_last"}) == [0, 1]
    nested = _estimate(pool, layer_data, cal, rows[:2])
    capped = multilayer_step(_multi([0, 1, 2]), rows[:2], nested, pool, layer_data, cal, CONTROL_HELD, SETTINGS,
                             max_layers=2)  # fmt: skip
    assert capped is not None and all(o.layers is not None and len(o.layers) <= 2 for o in capped.outer.values())
    full = multilayer_step(_multi([0, 1, 2]), rows[:2], nested, pool, layer_data, cal, CONTROL_HELD, SETTINGS)
    assert full is not None and any(o.layers is not None and len(o.layers) == 3 for o in full.outer.values())


def test_no_multi_layer_comparison_means_no_step(three_layers):
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    assert _step(None, rows, nested, pool, layer_data, cal) is None
    assert _step({}, rows, nested, pool, layer_data, cal) is None
    assert _step(_multi([1]), rows, nested, pool, layer_data, cal) is None  # one layer: nothing to join
    with pytest.raises(ValueError, match="not among the sweep's rows"):
        _step(_multi([1, 2]), [_row(2, 0.80)], nested, pool, layer_data, cal)


def test_the_step_round_trips_through_report_json_and_an_estimate_without_it_keeps_its_layout(three_layers):
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    before = {"nested": json.loads(json.dumps(asdict(nested)))}
    drop_unset(before)
    assert "multi_layer" not in before["nested"]  # a report written before the step reads back byte for byte
    assert NestedEstimate.from_json(before["nested"]).multi_layer is None
    nested.multi_layer = _step(_multi([1, 2]), rows, nested, pool, layer_data, cal)
    written = {"nested": json.loads(json.dumps(asdict(nested)))}
    drop_unset(written)
    assert "replayed_by" not in written["nested"]["multi_layer"]  # the run computed it
    assert NestedEstimate.from_json(written["nested"]) == nested


def test_record_nested_additions_extends_only_the_estimate_the_run_published(three_layers):
    """`probewatch bench selection --nested --record`: the step is written beside the report's estimate with
    the command that added it; a replay that chose differently or estimates differently is refused, and a
    report that has the step keeps its own."""
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    published = json.loads(json.dumps(asdict(nested)))
    nested.multi_layer = _step(_multi([1, 2]), rows, nested, pool, layer_data, cal)
    replay = Replay("deception", None, None, nested)

    def report() -> dict:
        return {"sources": {"nested": json.loads(json.dumps(published))}}

    raw = report()
    assert record_nested_additions(raw, replay, "probewatch bench selection --nested --record")
    step = raw["sources"]["nested"]["multi_layer"]
    assert step["replayed_by"] == "probewatch bench selection --nested --record" and step["layers"] == [1, 2]
    read = NestedEstimate.from_json(raw["sources"]["nested"]).multi_layer
    assert read is not None and read.mean == nested.multi_layer.mean and read.outer == nested.multi_layer.outer
    assert not record_nested_additions(raw, replay, "again")  # it has one: kept
    assert raw["sources"]["nested"]["multi_layer"]["replayed_by"] != "again"

    noise = report()  # the same choices, AUROCs a few pairs apart (another machine's fits): the same estimate
    noise["sources"]["nested"]["outer"]["a"]["auroc"] += 5e-4
    assert record_nested_additions(noise, replay, "x")
    other = report()
    other["sources"]["nested"]["outer"]["a"]["auroc"] += 0.01
    with pytest.raises(ValueError, match=r"is not the run's \(a: 0\.\d+ \(the run: 0\.\d+\)\)"):
        record_nested_additions(other, replay, "x")
    assert other["sources"]["nested"].get("multi_layer") is None
    chose = report()
    chose["sources"]["nested"]["outer"]["d"]["selection"]["chosen"]["config"]["layer"] = 7
    with pytest.raises(ValueError, match=r"d: chose .*'layer': 1.* \(the run: .*'layer': 7"):
        record_nested_additions(chose, replay, "x")
    changed = Replay("deception", None, None, nested, concat_recorded=True, concat_now=False)
    with pytest.raises(ValueError, match="chooses differently from the run"):
        record_nested_additions(report(), changed, "x")
    assert not record_nested_additions({"sources": {"nested": None}}, replay, "x")  # nothing to extend


def test_a_step_a_replay_recorded_before_the_per_source_search_is_replaced_and_a_runs_own_is_kept(three_layers):
    """Reports whose step an earlier replay added judged the run's set without each source (their outer sources
    name no layers): `--nested --record` replaces it with today's, which searched the set per source. A step
    the run computed itself stays, whatever it lacks: it is how that run decided. An old step reads back as it
    was written (no `layers` key appears)."""
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    published = json.loads(json.dumps(asdict(nested)))
    nested.multi_layer = _step(_multi([1, 2]), rows, nested, pool, layer_data, cal)
    assert nested.multi_layer is not None
    old = json.loads(json.dumps(asdict(nested.multi_layer)))
    for outer in old["outer"].values():
        del outer["layers"]
    old["mean"] = 0.5  # what the old step measured
    stale = {"sources": {"nested": {**json.loads(json.dumps(published)), "multi_layer": {**old, "replayed_by": "y"}}}}
    kept = {"sources": {"nested": {**json.loads(json.dumps(published)), "multi_layer": old}}}
    written = {"nested": json.loads(json.dumps(stale["sources"]["nested"]))}
    drop_unset(written)
    assert all("layers" not in o for o in written["nested"]["multi_layer"]["outer"].values())
    assert NestedEstimate.from_json(written["nested"]).multi_layer.outer["a"].layers is None

    replay = Replay("p", None, None, nested)
    assert record_nested_additions(stale, replay, "today")
    step = stale["sources"]["nested"]["multi_layer"]
    assert step["replayed_by"] == "today" and step["mean"] == nested.multi_layer.mean
    assert all(o["layers"] == [1, 2] for o in step["outer"].values())
    assert not record_nested_additions(stale, replay, "again")  # it is today's step now: kept
    assert not record_nested_additions(kept, replay, "today")  # the run's own step
    assert kept["sources"]["nested"]["multi_layer"]["mean"] == 0.5


def test_record_adds_the_tied_choices_to_a_report_written_before_them(three_layers, monkeypatch):
    """`--nested --record` also writes each source's tied choices and the estimate's tie range where the report
    predates them (naming the command), beside the step; a report that has them keeps its own."""
    from probewatch.training import nested as nested_module

    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80), _row(2, 0.80)]
    monkeypatch.setattr(nested_module, "TIE", 1.0)  # every candidate ties: the rule itself is unchanged
    nested = _estimate(pool, layer_data, cal, rows)
    assert nested.tie_range is not None
    published = json.loads(json.dumps(asdict(nested)))
    published["multi_layer"] = {"layers": [1, 2]}  # the run had the step already: only the ties are missing
    del published["tie_range"]
    for outer in published["outer"].values():
        del outer["tied"]
    raw = {"sources": {"nested": published}}
    assert record_nested_additions(raw, Replay("p", None, None, nested), "cmd")
    written = raw["sources"]["nested"]
    assert written["tie_range"] == nested.tie_range and written["ties_replayed_by"] == "cmd"
    assert all(written["outer"][n]["tied"] == o.tied for n, o in nested.outer.items())
    assert written["multi_layer"] == {"layers": [1, 2]}  # the run's own step is kept
    assert NestedEstimate.from_json({**written, "multi_layer": None}).tie_range == nested.tie_range
    assert not record_nested_additions(raw, Replay("p", None, None, nested), "again")  # nothing missing now


def test_a_replay_that_departs_from_the_run_is_recorded_beside_it_and_cleared_once_it_reproduces(three_layers):
    """`--nested --record` on a report whose estimate today's pool no longer reproduces: the run's estimate stays,
    the replay's per-source choices and AUROCs, its mean and its multi-layer step are written beside it with the
    command, the date and where it departs; a later replay that reproduces the run's removes the record."""
    pool, layer_data, cal = three_layers
    rows = [_row(1, 0.80)]
    nested = _estimate(pool, layer_data, cal, rows)
    nested.multi_layer = _step(_multi([1, 2]), rows, nested, pool, layer_data, cal)
    published = json.loads(json.dumps(asdict(nested)))
    del published["multi_layer"]
    replay = Replay("deception", None, None, nested)

    departs = {"sources": {"nested": json.loads(json.dumps(published))}}
    departs["sources"]["nested"]["outer"]["a"]["auroc"] += 0.05  # the run measured another number on its pool
    run_mean = departs["sources"]["nested"]["mean"]
    assert (
        record_replay_drift(departs, replay, "probewatch bench selection --nested --record", "2026-12-07") == "recorded"
    )
    written = departs["sources"]["nested"]
    assert written["mean"] == run_mean and "multi_layer" not in written  # the run's estimate is left as it was
    replayed = NestedEstimate.from_json(written).replayed
    assert replayed is not None and replayed.by == "probewatch bench selection --nested --record"
    assert replayed.on == "2026-12-07" and len(replayed.differences) == 1
    assert replayed.differences[0].startswith("a: ") and "(the run: " in replayed.differences[0]
    assert replayed.mean == nested.mean and replayed.worst == nested.worst
    assert replayed.worst_source == nested.worst_source
    assert replayed.multi_layer_mean == nested.multi_layer.mean  # the step measured on today's pool
    assert replayed.multi_layer == nested.multi_layer  # in full: each source's searched set, gates and AUROC
    assert "replayed_by" not in written["replayed"]["multi_layer"]  # `by` names the replay
    assert replayed.tie_range == nested.tie_range
    for name, o in nested.outer.items():
        assert replayed.outer[name].auroc == o.auroc and replayed.outer[name].config == o.selection.chosen.config
        assert replayed.outer[name].tied == o.tied

    changed = Replay("deception", None, None, nested, concat_recorded=True, concat_now=False)
    same = {"sources": {"nested": json.loads(json.dumps(published))}}
    assert record_replay_drift(same, changed, "x", "2026-12-07") == "recorded"  # the shipped choice itself moved
    assert same["sources"]["nested"]["replayed"]["differences"] == [
        "the shipped choice: today's selection code chooses differently from the run"
    ]

    departs["sources"]["nested"]["outer"]["a"]["auroc"] -= 0.05  # the pool is the run's again
    assert record_replay_drift(departs, replay, "x", "2026-12-08") == "cleared"
    assert "replayed" not in departs["sources"]["nested"]
    assert record_replay_drift(departs, replay, "x", "2026-12-08") is None  # nothing to clear, nothing to write
    assert record_replay_drift({"sources": {"nested": None}}, replay, "x", "2026-12-08") is None

    unset = {"nested": json.loads(json.dumps(asdict(nested)))}
    drop_unset(unset)
    assert "replayed" not in unset["nested"]  # an estimate nobody replayed keeps its layout


def test_a_departing_replay_keeps_its_tied_choices_and_the_docs_show_them(three_layers, monkeypatch):
    """Where the replay's choices tie, the record keeps each source's tied AUROCs and the estimate's tie range, and
    docs/quality.md's nested table shows them beside the replayed AUROCs: a departure that is a tie broken another
    way reads differently from one that moved every choice."""
    from probewatch.training import nested as nested_module
    from probewatch.training.quality_sources import nested_rows, replayed_text
    from probewatch.training.report_sources import SourcesReport

    pool, layer_data, cal = three_layers
    monkeypatch.setattr(nested_module, "TIE", 1.0)  # every candidate ties: the rule itself is unchanged
    nested = _estimate(pool, layer_data, cal, [_row(1, 0.80), _row(2, 0.80)])
    assert nested.tie_range is not None
    report = {"sources": {"nested": json.loads(json.dumps(asdict(nested)))}}
    report["sources"]["nested"]["outer"]["b"]["auroc"] -= 0.02
    assert record_replay_drift(report, Replay("p", None, None, nested), "cmd", "2026-12-07") == "recorded"
    read = NestedEstimate.from_json(report["sources"]["nested"])
    assert read.replayed is not None and read.replayed.tie_range == nested.tie_range
    low, high = nested.tie_range
    text = replayed_text(read)
    assert text.startswith(f"; replayed on today's pool (2026-12-07): **{nested.mean:.3f}** (worst: ")
    assert f"; every tie broken the worst / best way: {low:.3f} / {high:.3f}" in text
    rows = nested_rows(SourcesReport(mapping={}, counts={}, selection=None, nested=read, at_threshold={}))
    for row in rows:
        o = nested.outer[row["source"]]
        assert read.replayed.outer[row["source"]].tied == o.tied
        today = f"(replayed on today's pool: {o.auroc:.3f}" + (
            f", tied choices {o.tied[0]:.3f}–{o.tied[-1]:.3f}" if o.tied else ""
        )
        assert today in row["auroc"], row["auroc"]
    assert any(nested.outer[row["source"]].tied for row in rows)
    assert replayed_text(nested) == ""  # an estimate no replay departed from


def test_the_kind_gate_reads_a_single_layer_choice_from_its_token_rows(three_layers):
    """Concat candidates are fitted on one row per example (their mean is all they read), but the single-layer
    choice the kind gate compares with may pool tokens otherwise (here their maximum): it is fitted and scored on
    its token rows, exactly as the estimate's own fits are."""
    from probewatch.training.nested import FoldScorer, config_score, kind_folds
    from probewatch.training.nested_multilayer import _SetFits

    pool, layer_data, cal = three_layers
    single = _row(1, 0.80, aggregation="max")
    folds = kind_folds(pool, "d")
    fits = _SetFits(pool, layer_data, SETTINGS, "response")
    direct = FoldScorer(pool, layer_data, SETTINGS)
    direct.run((single, f.held) for f in folds)
    assert fits.score_tokens(single, folds, cal) == config_score(single, folds, direct, cal)
    assert set(fits.score_tokens(single, folds, cal).folds) == {f"{s}{k}" for s in "abc" for k in (1, 2)}
