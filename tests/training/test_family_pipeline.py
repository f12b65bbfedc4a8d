"""`probewatch train --family` on the tiny random-init model: member bundles + family.json + family_report.json,
loadable by the serving side and scored offline as the max of members."""

from __future__ import annotations

import json

from probewatch.data.dialogue import write_dialogues
from probewatch.family_scoring import add_family_scores
from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.probes.family import check_members, find_families
from probewatch.scoring import score_dialogues
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import control_dialogues, synthetic_dialogues

KINDS = ("sandbagging", "lie_by_omission", "liar_questions")


def test_train_family_writes_a_servable_family(tiny_loaded, tmp_path):
    data, control = tmp_path / "data.jsonl", tmp_path / "control.jsonl"
    dialogues = synthetic_dialogues(n_groups=36, kinds=KINDS, seed=0)
    write_dialogues(data, dialogues)
    write_dialogues(control, control_dialogues())
    config = TrainConfig(
        behaviour="deception", data_files=[data], control_file=control, layers=[1], methods=["logistic"],
        aggregations=["max"], out=tmp_path / "deception", progress=False, plots=False, multi_layer=0,
        nested_top_k=0, family=True, parity_check=0,
    )  # fmt: skip
    train(config, tiny_loaded)
    folder = tmp_path / "deception-family"
    report = json.loads((folder / "family_report.json").read_text())
    assert (tmp_path / "deception" / "family_report.json").read_text() == (folder / "family_report.json").read_text()
    assert sorted(report["members"]) == ["instructed_lying", "omission", "sandbagging"]
    assert set(report["heldout_kind"]["family"]) == set(KINDS)
    assert report["test"]["family"]["auroc"] > 0.6 and report["test"]["single"]["auroc"] is not None
    (family,) = find_families([folder])
    bundles = load_bundles([folder], expected_fingerprint=tiny_loaded.fingerprint)
    assert sorted(b.id for b in bundles) == sorted(family.member_ids)
    assert all(b.manifest.extra["family"] == family.id for b in bundles)
    check_members([family], {b.id: b.manifest for b in bundles})
    assert family.threshold.value == report["threshold"]["value"]
    results = score_dialogues(
        tiny_loaded.model, tiny_loaded.tokenizer, ProbeRuntime(bundles), dialogues[:6], progress=False
    )
    winners = add_family_scores(results, [family])
    for r, won in zip(results, winners):
        assert r.aggregate[family.id] == max(r.aggregate[m] for m in family.member_ids)
        assert r.aggregate[won[family.id]] == r.aggregate[family.id]
        assert r.flagged[family.id] == (r.aggregate[family.id] >= family.threshold.value)
