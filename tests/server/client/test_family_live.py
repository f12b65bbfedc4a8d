"""Probe families live (issue 22): the tiny HF model generating through the attach client into a real sidecar,
by rows and by pushdown. The family's score is the max of its members' aggregates exactly as offline
(`score_dialogues`-style full forward + `add_family_scores`); the family alone alerts, once per generation,
and its incident names the member that scored highest."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probewatch.capture import run_forward
from probewatch.family_scoring import add_family_scores
from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.probes.family import FamilyError, find_families
from probewatch.probes.selection import selection_mask
from probewatch.scoring import DialogueScores
from probewatch.server.store import IncidentStore
from tests.server.client.live_helpers import generate_attached
from tests.server.family_helpers import MEMBERS, family_folder
from tests.server.grpc_helpers import metric_value, scrape

pytestmark = pytest.mark.compat

ATOL = 1e-4


def _wait_for(found, timeout: float = 10.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = found()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("the webhook did not arrive")


def _offline(model, runtime: ProbeRuntime, tokens: list[int], n_prompt: int) -> DialogueScores:
    hidden = run_forward(model, runtime.layers, torch.tensor([tokens]))
    positions = np.arange(len(tokens))
    out = DialogueScores(0, None, None, None)
    for pid, scores in runtime.score_layers({layer: h[0] for layer, h in hidden.items()}).items():
        manifest = runtime.bundle(pid).manifest
        picked = scores.numpy()[selection_mask(manifest.token_selection, positions, n_prompt)]
        out.aggregate[pid] = aggregate(picked, manifest.aggregation)
        out.token_scores[pid] = picked.tolist()
        out.flagged[pid] = out.aggregate[pid] >= manifest.threshold.value
    return out


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_family_live_equals_offline_and_alerts_once(
    mode, tiny_model, start_sidecar, tiny_bundles, tiny_fp, tmp_path, hook
):
    folder = family_folder(tmp_path, tiny_fp, threshold=-100.0)  # every generation alerts (early: members are max)
    url, hooks = hook
    sidecar = start_sidecar([*tiny_bundles, folder], webhook_url=url)
    runtime = ProbeRuntime(load_bundles([*tiny_bundles, folder], expected_fingerprint=tiny_fp))
    families = find_families([folder])
    _, results, sequences = generate_attached(tiny_model, sidecar, mode, seed=5, batch=3)
    store = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True)
    try:
        for result, (prompt, generated) in zip(results, sequences):
            assert result.status == "closed" and not result.errors
            with torch.inference_mode():
                offline = _offline(tiny_model, runtime, prompt + generated, len(prompt))
            (winners,) = add_family_scores([offline], families)
            members = [m for m, _, _ in MEMBERS]
            assert offline.aggregate["fam"] == max(offline.aggregate[m] for m in members)
            assert result.scores["fam"] == pytest.approx(offline.aggregate["fam"], abs=ATOL)
            for m in members:
                assert result.scores[m] == pytest.approx(offline.aggregate[m], abs=ATOL)
                assert result.flagged[m] is False  # members never alert on their own
            assert result.flagged["fam"] is True and result.thresholds["fam"] == -100.0
            fam_alerts = [a for a in result.alerts if a["probe"] in ("fam", *members)]
            assert [a["probe"] for a in fam_alerts] == ["fam"] and fam_alerts[0]["early"]
            # one deception incident for the family, naming the member that won, with its token scores
            rows = {i.probe: i for i in store.find() if i.generation_id == result.generation_id}
            assert "fam" in rows and not set(members) & set(rows)
            incident = store.get(rows["fam"].id)  # with the generation's context
            assert incident.score == pytest.approx(offline.aggregate["fam"], abs=ATOL)
            assert incident.context["fam"]["family"]["member"] == winners["fam"]
            assert incident.context["fam"]["family"]["types"]["fam-sand"] == "sandbagging"
            kept = [s for _, s in incident.token_scores]
            np.testing.assert_allclose(kept, offline.token_scores["fam"], atol=ATOL)
            # the webhook names the member too (what kind of deception fired); other probes carry no member
            hook = _wait_for(
                lambda gid=result.generation_id: [h for h in hooks if h["generation_id"] == gid and h["probe"] == "fam"]
            )
            assert hook[0]["member"] == winners["fam"]
            assert all("member" not in h for h in hooks if h["probe"] != "fam")
    finally:
        store.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_alerts_total", probe="fam") == len(results)
    assert metric_value(text, "probewatch_alerts_total", probe="fam-sand") in (None, 0)
    assert metric_value(text, "probewatch_generation_score_count", probe="fam") == len(results)


def test_family_of_mean_members_alerts_at_close_and_below_threshold_not_at_all(
    tiny_model, start_sidecar, tiny_bundles, tiny_fp, tmp_path
):
    folder = family_folder(tmp_path, tiny_fp, threshold=100.0, aggregation="mean")
    sidecar = start_sidecar([*tiny_bundles, folder])
    _, results, _ = generate_attached(tiny_model, sidecar, "rows", seed=5, batch=3)
    for result in results:
        assert result.flagged["fam"] is False and not [a for a in result.alerts if a["probe"].startswith("fam")]
        assert result.scores["fam"] == pytest.approx(max(result.scores[m] for m, _, _ in MEMBERS), abs=1e-6)


def test_sidecar_refuses_a_family_without_all_its_members(start_sidecar, tiny_bundles, tiny_fp, tmp_path):
    folder = family_folder(tmp_path, tiny_fp, threshold=0.0)
    manifest = json.loads((folder / "family.json").read_text())
    manifest["members"].append({"id": "fam-gone", "type": "sycophancy"})
    (folder / "family.json").write_text(json.dumps(manifest))
    with pytest.raises(FamilyError, match=r"family 'fam': member bundle\(s\) \['fam-gone'\] are not loaded"):
        start_sidecar([*tiny_bundles, folder])
