"""The uncertainty band on a real sidecar: a generation whose final aggregate ends in [uncertain_from, threshold)
is counted on /metrics, marked `uncertain` in the summary and written as a low-priority incident, and raises no
Alert and no webhook; above the threshold everything alerts as before. Real gRPC, real store, real HTTP hook."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.store import IncidentStore
from tests.probes.helpers import make_bundle
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.waiting import wait_until


def banded_bundle(root: Path, probe_id: str, aggregation: str, fingerprint: str) -> Path:
    """Layer 1, threshold 1.0, band [0.0, 1.0); seed 1 (the same weights for every id: one row scores all alike)."""
    path, _ = make_bundle(
        root, probe_id, layer=1, d=D_TINY, seed=1, aggregation=aggregation, fingerprint=fingerprint, threshold=1.0
    )
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["threshold"]["uncertain_from"] = 0.0
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def scored(sidecar, scores: list[float]) -> np.ndarray:
    """Rows on layer 1 that the banded probes (weight w, bias 0.25) score exactly `scores`."""
    w = sidecar.runtime.stacks[1].weight[:, 0].numpy().astype(np.float64)
    return np.stack([w / np.dot(w, w) * (s - 0.25) for s in scores]).astype(np.float32)


def test_a_score_in_the_band_is_uncertain_with_a_low_priority_incident_and_no_alert(
    start_sidecar, tiny_bundles, tiny_fp, tmp_path, hook
):
    url, received = hook
    dec = banded_bundle(tmp_path / "b", "dec", "max", tiny_fp)
    decm = banded_bundle(tmp_path / "b", "decm", "mean", tiny_fp)
    sidecar = start_sidecar(bundles=[dec, decm, tiny_bundles[1]], webhook_url=url)  # + avg: no band
    listing = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).ListProbes(pb.ListProbesRequest(), timeout=10)
    info = {p.id: p for p in listing.probes}
    assert info["dec"].HasField("uncertain_from") and info["dec"].uncertain_from == 0.0
    assert not info["avg"].HasField("uncertain_from")
    text = scrape(sidecar.metrics_port)
    assert 'probewatch_uncertain_total{behaviour="deception",probe="dec"} 0.0' in text  # pre-created at 0
    assert 'probewatch_uncertain_total{behaviour="alignment_faking",probe="avg"} 0.0' in text  # no band: stays 0

    client = StreamClient(sidecar.address)
    # mid: one token at 0.5, in both bands -> two uncertain results, no alert
    client.send(open_msg("mid", tiny_fp), chunk_msg("mid", 1, scored(sidecar, [0.5]), [0]), close_msg("mid"))
    mid = client.wait_summary("mid")
    results = {r.probe_id: r for r in mid.results}
    assert not mid.alerts and not client.of("alert", "mid")
    for pid in ("dec", "decm"):
        r = results[pid]
        assert (r.flagged, r.uncertain, r.incident_id > 0) == (False, True, True)
        assert r.score == pytest.approx(0.5, abs=1e-4)
    assert (results["avg"].uncertain, results["avg"].incident_id) == (False, 0)
    # split: tokens 1.5 then -0.5 -> the max crosses (an early alert), the mean ends at 0.5 (uncertain)
    # hot: 2.0 -> both alert; cold: -1.0 -> nothing at all
    for gid, scores in (("split", [1.5, -0.5]), ("hot", [2.0]), ("cold", [-1.0])):
        client.send(
            open_msg(gid, tiny_fp), chunk_msg(gid, 1, scored(sidecar, scores), range(len(scores))), close_msg(gid)
        )
    split, hot, cold = (client.wait_summary(g) for g in ("split", "hot", "cold"))
    by = {r.probe_id: r for r in split.results}
    assert [a.probe_id for a in split.alerts] == ["dec"] and split.alerts[0].early
    assert (by["dec"].flagged, by["dec"].uncertain) == (True, False)
    assert (by["decm"].flagged, by["decm"].uncertain) == (False, True)
    assert by["dec"].incident_id == split.alerts[0].incident_id > 0
    assert sorted(a.probe_id for a in hot.alerts) == ["dec", "decm"]
    assert not any(r.uncertain for r in hot.results)
    assert not cold.alerts and not any(r.uncertain or r.flagged or r.incident_id for r in cold.results)
    assert [a.generation_id for a in client.of("alert")] == ["split", "hot", "hot"]  # never one for mid
    client.close()

    # the webhook: exactly the three real alerts, none for an uncertain result
    wait_until(
        lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_webhook_deliveries_total", outcome="ok") >= 3,
        15,
        "three webhook deliveries",
    )
    assert sorted((b["generation_id"], b["probe"]) for b in received) == [
        ("hot", "dec"),
        ("hot", "decm"),
        ("split", "dec"),
    ]
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_uncertain_total", probe="dec") == 1
    assert metric_value(text, "probewatch_uncertain_total", probe="decm") == 2
    assert metric_value(text, "probewatch_uncertain_total", probe="avg") == 0
    assert metric_value(text, "probewatch_alerts_total", probe="dec") == 2
    assert metric_value(text, "probewatch_alerts_total", probe="decm") == 1
    assert metric_value(text, "probewatch_webhook_deliveries_total", outcome="ok") == 3

    # the store: low-priority rows for the uncertain results, normal ones for the alerts
    store = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True)
    rows = {(i.generation_id, i.probe): i for i in store.find()}
    assert {k: i.priority for k, i in rows.items()} == {
        ("mid", "dec"): "low",
        ("mid", "decm"): "low",
        ("split", "dec"): "normal",
        ("split", "decm"): "low",
        ("hot", "dec"): "normal",
        ("hot", "decm"): "normal",
    }
    low = store.get(results["dec"].incident_id)
    assert low.priority == "low" and low.score == pytest.approx(0.5, abs=1e-4) and low.threshold == 1.0
    assert low.generation_status == "closed" and not low.early
    assert low.context["dec"]["uncertain"] and low.context["dec"]["uncertain_from"] == 0.0
    assert not low.context["dec"]["flagged"]
    assert [i.generation_id for i in store.find(priority="low", probe="decm")] == ["split", "mid"]
    store.close()
