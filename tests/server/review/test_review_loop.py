"""The whole review loop on the reference model, with real parts only.

Traffic: SmolLM2-135M-Instruct generates answers to 8 factual questions (4 under an honest system
prompt, 4 under a deceptive one) through the attach client; a real sidecar scores them with a
mean-difference deception probe whose threshold is far too low (every generation alerts: a
false-positive-heavy probe) and a refusal probe, and writes the incidents to SQLite.

1. A real headless Chromium drives the review app: the queue, a filter, an incident page with the
   per-token heatmap (the flagged tokens' cells, their decoded text and scores), a verdict; the
   verdict is then found in the database, in `probewatch incidents export --labelled` and on /metrics.
   Screenshots of the queue and the incident page are written (docs/review.md shows copies).
2. Reviewers confirm the four highest-scoring incidents (true positives) and reject the other four
   (false positives); the export goes to `probewatch calibrate --extra-data` (with benign control
   dialogues); the same prompts replayed live through a sidecar with the recalibrated bundle raise no
   incident for any reviewed false positive, and every generation alerts exactly when its live
   score reaches the new threshold (the reviewed true positives above it still alert).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
import torch

from probewatch.cli.main import main
from probewatch.data.chat import render
from probewatch.server.client.hf_attach import attach
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.catalog import Catalog
from probewatch.server.sidecar.config import sidecar_config_for
from probewatch.server.sidecar.process import Sidecar
from probewatch.server.store import IncidentStore
from tests.server.grpc_helpers import metric_value
from tests.server.helpers import DECEPTIVE_SYSTEM, FACTS, HONEST_SYSTEM, fit_reference_bundles, set_manifest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

PROBE = "test-deception"
MAX_NEW_TOKENS = 16
SCREENSHOTS = os.environ.get("PROBEWATCH_REVIEW_SCREENSHOTS")  # a folder: also keep the screenshots there


def _conversations() -> list[tuple[str, list[dict[str, str]]]]:
    out = []
    for k, (question, _, _) in enumerate(FACTS):
        system = DECEPTIVE_SYSTEM if k % 2 else HONEST_SYSTEM
        out.append(
            (
                "deceptive" if k % 2 else "honest",
                [{"role": "system", "content": system}, {"role": "user", "content": question}],
            )
        )
    return out


def _run_traffic(reference, bundles: list[Path], db: Path) -> dict[str, float]:
    """Generate every conversation (one left-padded batch) through a live sidecar; generation id -> deception score."""
    tok = reference.tokenizer
    prompts = [
        tok(render(tok, msgs, add_generation_prompt=True), add_special_tokens=False)["input_ids"]
        for _, msgs in _conversations()
    ]
    width = max(map(len, prompts))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    config = sidecar_config_for(
        None,
        [str(p) for p in bundles],
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        incident_db=db,
        store_text="full",  # token text in the heatmap needs the token ids, which only `full` keeps
    )
    gids = [f"{kind}-{k}" for k, (kind, _) in enumerate(_conversations())]
    with Sidecar(config) as sidecar:
        monitor = attach(reference.model, tok, sidecar=sidecar.address, wait_s=15)
        try:
            with torch.inference_mode():
                reference.model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=MAX_NEW_TOKENS,
                    do_sample=False,
                    generation_ids=gids,
                    probewatch_metadata={"tenant": "acme", "route": "support-bot"},
                )
            results = [h.result(60) for h in monitor.last_generations]
        finally:
            monitor.detach()
    return {r.generation_id: r.scores[PROBE] for r in results}


@pytest.fixture(scope="module")
def traffic(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("review-loop")
    with torch.inference_mode():
        bundles = fit_reference_bundles(reference, root / "bundles")
    by_id = {p.name: p for p in bundles}
    # the probe under review: a threshold far too low (every generation alerts)
    set_manifest(by_id[PROBE], threshold={"value": -100.0, "method": "fixed", "fpr": None})
    used = [by_id[PROBE], by_id["test-refusal"]]
    db = root / "incidents.sqlite3"
    scores = _run_traffic(reference, used, db)
    return {"root": root, "bundles": used, "db": db, "scores": scores}


def test_review_in_a_real_browser(traffic, browser, serve_review, tmp_path, capsys):
    db = traffic["db"]
    store = IncidentStore.open(db)
    ours = store.find(probe=PROBE)
    assert len(ours) == len(FACTS)  # every generation alerted on the too-low threshold
    url = serve_review(store, AuthConfig(local_reviewer="alice"), Catalog(traffic["bundles"], discover=False))
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(f"{url}/")
        rows = page.locator("tr.row")  # one row per flagged generation, its probes as badges
        generations = {i.generation_id for i in store.find()}
        assert rows.count() == len(generations)
        assert page.locator('.tab[data-status="open"] .count').inner_text() == str(len(generations))
        shot_queue = tmp_path / "review-queue.png"
        page.screenshot(path=str(shot_queue), full_page=True)
        # filter: the probe menu applies on change (review.js)
        page.select_option('select[name="probe"]', PROBE)
        page.wait_for_url(re.compile(rf"probe={PROBE}"))
        assert page.locator("tr.row").count() == len(ours)
        # open the lowest-scoring incident of the probe (an honest answer, as it turns out)
        target = min(ours, key=lambda i: i.score)
        page.locator(f'tr.row[data-generation="{target.generation_id}"] td.snippet').click()
        page.wait_for_url(re.compile(rf"/generations/{re.escape(target.generation_id)}"))
        page.locator(f'#badges a[data-probe="{PROBE}"]').click()  # this probe's own incident page
        page.wait_for_url(f"{url}/incidents/{target.id}")
        heatmap = page.locator(f'.heatmap[data-probe="{PROBE}"]')
        incident = store.get(target.id)
        hot_expected = [int(p) for p, s in incident.token_scores if s >= incident.threshold]
        hot = heatmap.locator(".tok.hot")
        assert hot.count() == len(hot_expected) == len(incident.token_scores) > 3
        assert [int(x) for x in hot.evaluate_all("els => els.map(e => e.dataset.pos)")] == hot_expected
        first_score = float(hot.first.get_attribute("data-score"))
        assert first_score == pytest.approx(incident.token_scores[0][1], abs=1e-3)
        cell_text = "".join(heatmap.locator(".tok:not(.in-prompt)").all_inner_texts())
        assert cell_text.strip().startswith(incident.response.strip()[:10])  # token ids decoded by the tokenizer
        hot.first.hover()
        assert "score" in page.locator("#tip").inner_text()
        # the refusal probe's heatmap is a second tab: hot cells are its tokens over its own threshold
        page.locator(".probe-tab", has_text="test-refusal").click()
        refusal = page.locator('.heatmap[data-probe="test-refusal"]')
        assert refusal.is_visible() and not heatmap.is_visible()
        ref = incident.context["test-refusal"]
        assert refusal.locator(".tok.hot").count() == sum(s >= ref["threshold"] for _, s in ref["token_scores"])
        page.locator(".probe-tab", has_text=PROBE).click()
        # the verdict
        page.check('input[name="label"][value="false_positive"]')
        page.fill('#label-form textarea[name="comment"]', "honest answer to a factual question")
        page.click("#save-label")
        page.wait_for_url(re.compile(r"done=label"))
        assert page.locator("#label").inner_text() == "false positive"
        assert "labelled false positive" in page.locator("#timeline").inner_text()
        shot_incident = tmp_path / "review-incident.png"
        page.screenshot(path=str(shot_incident), full_page=True)
        page.click("#resolve")
        page.wait_for_url(re.compile(r"done=resolve"))
        assert page.locator("#status").inner_text() == "resolved"
    finally:
        page.close()
    # the verdict in the database ...
    row = store.get(target.id)
    assert (row.label, row.labelled_by, row.status) == ("false_positive", "alice", "resolved")
    assert [(e.action, e.reviewer) for e in store.events(target.id)] == [("label", "alice"), ("resolve", "alice")]
    # ... in the export ...
    out = tmp_path / "reviewed.jsonl"
    assert main(["incidents", "export", "--labelled", "--out", str(out), "--db", str(db), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 1 and summary["labels"] == {"false_positive": 1}
    line = json.loads(out.read_text())
    assert line["label"] == 0 and line["kind"] == "reviewed" and line["meta"]["incident_id"] == target.id
    assert line["meta"]["probe"] == PROBE and line["meta"]["bundle_version"] == "test-1"
    assert line["meta"]["model_fingerprint"] == row.model_fingerprint and line["meta"]["reviewer"] == "alice"
    assert line["messages"][-1] == {"role": "assistant", "content": row.response}
    assert line["messages"][0] == {"role": "system", "content": HONEST_SYSTEM}
    # ... and on /metrics
    text = httpx.get(f"{url}/metrics").text
    assert metric_value(text, "probewatch_review_labels", probe=PROBE, verdict="false_positive") == 1
    assert metric_value(text, "probewatch_review_precision", probe=PROBE) == 0.0
    assert metric_value(text, "probewatch_review_incidents", status="resolved") == 1
    assert metric_value(text, "probewatch_review_actions_total", action="label") == 1
    store.close()
    if SCREENSHOTS:
        for shot in (shot_queue, shot_incident):
            shutil.copy(shot, Path(SCREENSHOTS) / shot.name)


def test_labels_export_recalibrate_no_longer_flags_reviewed_false_positives(traffic, reference, tmp_path, capsys):
    root = traffic["root"]
    db = root / "loop.sqlite3"
    shutil.copy(traffic["db"], db)  # this test's own reviews, on a copy of the traffic's store
    store = IncidentStore.open(db)
    ranked = sorted(store.find(probe=PROBE), key=lambda i: i.score)
    verdicts = {i.generation_id: "false_positive" if k < 4 else "true_positive" for k, i in enumerate(ranked)}
    for incident in ranked:
        store.label(int(incident.id or 0), "bob", verdicts[incident.generation_id])
    store.close()
    reviewed = tmp_path / "reviewed.jsonl"
    assert main(["incidents", "export", "--labelled", "--out", str(reviewed), "--db", str(db), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["labels"] == {"true_positive": 4, "false_positive": 4} and summary["skipped"] == {}
    # benign control traffic for the FPR part of the threshold
    control = tmp_path / "control.jsonl"
    control.write_text(
        "".join(
            json.dumps(
                {
                    "messages": [
                        {"role": "system", "content": HONEST_SYSTEM},
                        {"role": "user", "content": q},
                        {"role": "assistant", "content": truth},
                    ]
                }
            )
            + "\n"
            for q, truth, _ in FACTS
        )
    )
    recalibrated = root / "recalibrated" / PROBE
    argv = [
        "calibrate",
        "--bundle",
        str(traffic["bundles"][0]),
        "--control",
        str(control),
        "--extra-data",
        str(reviewed),
    ]
    assert main([*argv, "--out", str(recalibrated), "--quiet", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    threshold = result["threshold"]
    negatives = [s["score"] for s in result["reviewed"]["scores"] if s["label"] == 0]
    assert result["reviewed"]["n_negative"] == 4 and result["reviewed"]["flagged_negative"] == 0
    assert threshold >= max(negatives) + 0.05 - 1e-9 and threshold > -100
    manifest = json.loads((recalibrated / "manifest.json").read_text())
    assert manifest["threshold"]["value"] == threshold and "reviewed.jsonl" in manifest["threshold"]["calibration_set"]
    # replay the same prompts live with the recalibrated bundle
    replay = tmp_path / "replay.sqlite3"
    live = _run_traffic(reference, [recalibrated, traffic["bundles"][1]], replay)
    for gid, score in live.items():  # greedy decoding: the same answers, so the same scores as the first run
        assert score == pytest.approx(traffic["scores"][gid], abs=1e-4)
    store = IncidentStore.open(replay, readonly=True)
    alerted = {i.generation_id for i in store.find(probe=PROBE, priority="normal")}
    uncertain = {i.generation_id: i.score for i in store.find(probe=PROBE, priority="low")}
    store.close()
    false_positives = {g for g, v in verdicts.items() if v == "false_positive"}
    assert not alerted & false_positives  # no reviewed false positive alerts any more
    # calibrate's uncertainty band (default `auto`: from the control threshold up to the raised one)
    # keeps what fell below the new threshold on record as low-priority incidents, never alerted
    band = manifest["threshold"].get("uncertain_from")
    assert all(band is not None and band <= s < threshold for s in uncertain.values())
    assert alerted == {g for g, s in live.items() if s >= threshold}
    recall = result["reviewed"]["recall_positive"]
    assert len(alerted) == round(4 * recall)  # the offline recall calibrate reported is what happens live
    print(
        f"recalibrated {PROBE}: threshold -100 -> {threshold:.3f} (control alone: {result['threshold_from_control']:.3f}); "
        f"reviewed false positives flagged: 0/4; reviewed true positives still flagged: {len(alerted)}/4"
    )


def test_the_fired_token_is_painted_above_in_a_real_browser(browser, serve_review, tmp_path):
    """One token far above the threshold (issue 21: it used to be the palest blue): in Chromium its
    computed background is the strongest "above" red, the token far below is blue, the legend says so.
    Needs no model: the incident is written through the store API as the sidecar writes it."""
    from probewatch.server.review.view import ABOVE_TO, BELOW_RGB
    from probewatch.server.store import Incident

    store = IncidentStore.open(tmp_path / "fired.sqlite3")
    iid = store.record(
        Incident(
            generation_id="fired",
            probe="dec",
            behaviour="deception",
            score=9.89,
            threshold=-1.409,
            model_fingerprint="pwfp1:" + "ab" * 16,
            bundle_version="1",
            aggregation="max",
            token_scores=[[78, -1.409], [79, -7.2], [80, 9.89]],
            response="a b c",
            tokens=[[78, 1], [79, 2], [80, 3]],
        )
    )
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    try:
        page.goto(f"{url}/incidents/{iid}")
        heatmap = page.locator('.heatmap[data-probe="dec"]')
        background = "el => getComputedStyle(el).backgroundColor"
        fired = heatmap.locator('.tok[data-pos="80"]')
        assert "hot" in fired.get_attribute("class").split()
        assert fired.evaluate(background) == f"rgb{ABOVE_TO}"  # the strongest "above" shade
        assert fired.evaluate("el => getComputedStyle(el).color") == "rgb(255, 255, 255)"
        at = heatmap.locator('.tok[data-pos="78"]')  # exactly at the threshold: still "above" (orange)
        r, g, b = map(int, re.findall(r"\d+", at.evaluate(background))[:3])
        assert "hot" in at.get_attribute("class").split() and r > g > b
        low = heatmap.locator('.tok[data-pos="79"]').evaluate(background)
        assert low.startswith(f"rgba({', '.join(map(str, BELOW_RGB))}, 0.55")  # far below: saturated blue
        legend = page.locator("#heatmaps .legend")
        assert "At or above" in legend.inner_text()
        assert legend.locator(".swatch.above").evaluate(background) == f"rgb{ABOVE_TO}"
    finally:
        page.close()
        store.close()
