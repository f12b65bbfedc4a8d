"""`probewatch bench evasion` on every shipped probe (benchmarks/evasion.py) and its `bench quality
--evasion-only` part: real items from the public datasets, the reference model, the shipped bundles."""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from probewatch.behaviours import BEHAVIOURS
from probewatch.benchmarks import quality
from probewatch.benchmarks.evasion import evaluate_bundles, evaluation_items
from probewatch.bundle_index import shipped_root
from probewatch.probes.aggregate import aggregate
from probewatch.scoring import score_dialogues
from probewatch.training.evasion import with_sincere_response

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("behaviour", BEHAVIOURS)
def test_items_are_label_balanced_and_whole_for_the_probe_that_reads_them(behaviour, shared_data):
    got = evaluation_items(behaviour, shared_data, per_class=6, seed=0)
    items, where = got.dialogues, got.where
    labels = Counter(d.label for d in items)
    assert labels == {1: 6, 0: 6}
    if behaviour == "refusal":
        assert where.startswith("refusal_direction harmful_val") and got.paraphrases == []
        return
    assert where == f"{behaviour.replace('_', ' ')} pool, kind-balanced sample"
    assert len({d.kind for d in items}) >= 3  # kinds taken in turn, not the biggest one
    prompt_reader = behaviour == "monitored_framing"
    assert all(d.ends_with_assistant != prompt_reader for d in items)
    again = evaluation_items(behaviour, shared_data, 6, 0)
    assert items == again.dialogues and got.paraphrases == again.paraphrases  # reproducible
    if behaviour != "deception":  # only the deception pool holds the scenarios paraphrases.yaml rewords
        assert got.paraphrases == []
        return
    # every scenario of the six hand-written kinds, in two formats, both answers
    assert Counter(written.label for written, _ in got.paraphrases) == {1: 288, 0: 288}
    assert len({written.kind for written, _ in got.paraphrases}) == 6
    for written, reworded in got.paraphrases:  # only the answer changes: same context, label, group
        assert reworded.messages[:-1] == written.messages[:-1] and reworded.label == written.label
        assert reworded.group == written.group and reworded.messages[-1].content != written.messages[-1].content


@pytest.mark.integration
def test_shipped_probes_of_other_behaviours_are_measured_like_deception(reference, shared_data):
    root = shipped_root() / reference.model_id
    dirs = [root / "alignment-faking", root / "monitored-framing"]
    reports = {r["probe_id"]: r for r in evaluate_bundles(reference, dirs, shared_data, 2, progress=False)}
    af, mf = reports["alignment-faking"], reports["monitored-framing"]
    assert [r["condition"] for r in af["results"]] == [
        "unmodified",
        "told it is monitored",
        "sincerity rewording",
        "both",
    ]
    assert [r["condition"] for r in mf["results"]] == ["unmodified", "told it is monitored"]  # reads the prompt only
    assert af["behaviour"] == "alignment_faking" and af["data"] == "alignment faking pool, kind-balanced sample"
    # the unmodified row is the shipped scoring of the same items at the shipped threshold
    from probewatch.probes import ProbeRuntime, load_bundle

    bundle = load_bundle(dirs[0], expected_fingerprint=reference.fingerprint)
    items = evaluation_items("alignment_faking", shared_data, 2, 0).dialogues
    done = score_dialogues(reference.model, reference.tokenizer, ProbeRuntime([bundle]), items, progress=False)
    scores = np.array([r.aggregate["alignment-faking"] for r in done])
    labels = np.array([d.label for d in items])
    unmodified = af["results"][0]
    assert af["threshold"] == pytest.approx(bundle.manifest.threshold.value)
    assert unmodified["recall"] == pytest.approx(float((scores[labels == 1] >= af["threshold"]).mean()))
    assert unmodified["mean_positive"] == pytest.approx(float(scores[labels == 1].mean()), abs=1e-4)
    for report in (af, mf):  # every changed condition moves the positives' scores
        for r in report["results"][1:]:
            assert r["n_positive"] == r["n_negative"] == 2 and r["median_positive_change"] != 0.0
    # a rewording is also pooled over the answer's own tokens: the unmodified item's count of the reworded tail
    reworded = [with_sincere_response(d) for d in items]
    again = score_dialogues(reference.model, reference.tokenizer, ProbeRuntime([bundle]), reworded, progress=False)
    spec = bundle.manifest.aggregation
    tails = [
        aggregate(np.asarray(r.token_scores["alignment-faking"])[-len(b.token_scores["alignment-faking"]) :], spec)
        for r, b in zip(again, done)
    ]
    expected = float(np.median((np.array(tails) - scores)[labels == 1]))
    sincerity = next(r for r in af["results"] if r["condition"] == "sincerity rewording")
    assert sincerity["median_positive_change_answer"] == pytest.approx(expected, abs=1e-4)
    assert all(r["median_positive_change_answer"] is None for r in mf["results"])  # no rewording of a prompt reader


@pytest.mark.integration
def test_the_deception_probe_is_also_scored_on_paraphrased_scenario_answers(reference, shared_data):
    """The sample's rows, and the held-out rows on the scenarios of the bundle's test split (given here as one
    scenario's group: rebuilding the real split prepares the whole deception pool, `bundle_test_groups`). The
    held-out rows are the shipped bundle's scores of exactly those dialogues, as written and paraphrased."""
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.training.evasion import (
        AS_WRITTEN,
        HELD_OUT_AS_WRITTEN,
        HELD_OUT_PARAPHRASED,
        PARAPHRASED,
        held_out_pairs,
    )

    path = shipped_root() / reference.model_id / "deception"
    pairs = evaluation_items("deception", shared_data, 1, 0).paraphrases
    held = {str(pairs[0][0].group)}
    (report,) = evaluate_bundles(reference, [path], shared_data, 1, progress=False, held_out_groups={"deception": held})
    conditions = [r["condition"] for r in report["results"]]
    assert conditions[4:] == [AS_WRITTEN, PARAPHRASED, HELD_OUT_AS_WRITTEN, HELD_OUT_PARAPHRASED]
    assert [(r["n_positive"], r["n_negative"]) for r in report["results"][4:]] == [(1, 1)] * 2 + [(2, 2)] * 2
    in_test = held_out_pairs(pairs, held)  # one scenario in two formats, both answers
    runtime = ProbeRuntime([load_bundle(path, expected_fingerprint=reference.fingerprint)])
    written, reworded = (
        np.array(
            [
                r.aggregate["deception"]
                for r in score_dialogues(reference.model, reference.tokenizer, runtime, side, progress=False)
            ]
        )
        for side in ([w for w, _ in in_test], [p for _, p in in_test])
    )
    positive = np.array([w.label for w, _ in in_test]) == 1
    rows = report["results"][6:]
    assert rows[0]["mean_positive"] == pytest.approx(float(written[positive].mean()), abs=1e-4)
    assert rows[1]["mean_positive"] == pytest.approx(float(reworded[positive].mean()), abs=1e-4)
    change = float(np.median(reworded[positive] - written[positive]))
    assert rows[1]["median_positive_change"] == pytest.approx(change, abs=1e-4) and change != 0.0


@pytest.mark.integration
def test_evasion_only_part_adds_rows_and_keeps_the_others(reference, shared_data, tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs" / "quality", docs / "quality")
    parser = argparse.ArgumentParser()
    quality.add_cli_args(parser)
    args = parser.parse_args(
        ["--evasion-only", "--evasion-per-class", "3", "--probes", "monitored-framing", "--quiet"]
        + ["--data-dir", str(shared_data)]
        + ["--runs-dir", str(tmp_path / "runs"), "--doc", str(docs / "quality.md"), "--threads", "2"]
    )
    before = {r["probe_id"] for r in json.loads((docs / "quality" / "evasion.json").read_text())}
    assert quality.main(args) == 0
    saved = json.loads((tmp_path / "runs" / "evasion.json").read_text())
    assert {r["probe_id"] for r in saved} == before | {"monitored-framing"}
    assert json.loads((docs / "quality" / "evasion.json").read_text()) == saved  # published with the doc
    timing = json.loads((tmp_path / "runs" / "timing.json").read_text())
    assert timing["other_s"]["evasion:monitored-framing"] > 0
    assert timing["total_s"] == pytest.approx(sum(timing["probes_s"].values()) + sum(timing["other_s"].values()))
    text = (docs / "quality.md").read_text()
    assert "| `monitored-framing` | told it is monitored | 3 / 3 |" in text
    assert "| `deception` | unmodified |" in text  # the other probes' rows stay
    assert "## `alignment-faking`" in text  # and a part documents every probe, not only --probes


def test_evasion_only_names_a_probe_that_is_not_shipped(tmp_path):
    args = SimpleNamespace(probes=["deception"], runs_dir=tmp_path, data_dir=None, quiet=True)
    with pytest.raises(FileNotFoundError, match="no shipped bundle for deception under"):
        quality._evasion_only(args, SimpleNamespace(model_id="no-such-model"), tmp_path)
