"""Monitor the monitor: a real sidecar measures per-probe drift of live generation scores from the bundle's
calibration bins (PSI) and the live alert rate against the expected one, on a real /metrics scrape."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from probewatch.probes.calibration import CalibrationReference, reference_from_scores
from probewatch.probes.errors import BundleError
from probewatch.server.sidecar.drift import DriftMonitor, ProbeWindow
from probewatch.server.sidecar.specs import ProbeSpec
from tests.probes.helpers import make_bundle
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape

THRESHOLD = 1.0
WINDOW = 400


@pytest.fixture
def drift_bundle(tmp_path, tiny_fp):
    """A `last`-aggregated linear probe whose manifest carries the reference of N(0, 1) calibration scores."""
    path, tensors = make_bundle(
        tmp_path, "drifty", layer=1, d=D_TINY, seed=5, aggregation="last", fingerprint=tiny_fp, threshold=THRESHOLD
    )
    calibration = np.random.default_rng(1).standard_normal(4000)
    ref = reference_from_scores(calibration, THRESHOLD, calibration_set="unit-normal")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.setdefault("extra", {})["calibration_reference"] = ref.to_json()
    (path / "manifest.json").write_text(json.dumps(manifest))
    w = tensors["weight"].double().numpy().reshape(-1)
    bias = float(tensors["bias"].reshape(-1)[0])
    return path, w, bias, ref


def _row_scoring(score: float, w: np.ndarray, bias: float) -> np.ndarray:
    """One residual row whose probe score is exactly `score`: x = (score - b) w / |w|^2."""
    return ((score - bias) * w / (w @ w)).astype(np.float32)[None, :]


def _stream_generations(sidecar, fp, scores, w, bias, tag: str) -> None:
    client = StreamClient(sidecar.address)
    try:
        for i, s in enumerate(scores):
            gid = f"{tag}-{i}"
            client.send(open_msg(gid, fp), chunk_msg(gid, 1, _row_scoring(float(s), w, bias), [0]), close_msg(gid))
        last = f"{tag}-{len(scores) - 1}"
        client.wait_summary(last, timeout=30)
        client.wait_for(lambda rs: sum(r.WhichOneof("msg") == "summary" for r in rs) >= len(scores), timeout=30)
    finally:
        client.close()


def test_psi_small_on_calibration_like_scores_large_when_shifted(start_sidecar, drift_bundle, tiny_fp, tmp_path):
    path, w, bias, ref = drift_bundle
    sidecar = start_sidecar([path], drift_window=WINDOW, incident_db=None)
    rng = np.random.default_rng(2)
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_probe_expected_alert_rate", probe="drifty") == pytest.approx(
        ref.expected_alert_rate
    )
    assert "probewatch_probe_score_psi{" not in text  # nothing yet: no PSI from an empty window

    _stream_generations(sidecar, tiny_fp, rng.standard_normal(WINDOW), w, bias, "calm")
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_probe_drift_window_generations", probe="drifty") == WINDOW
    calm_psi = metric_value(text, "probewatch_probe_score_psi", probe="drifty")
    assert 0 < calm_psi < 0.15  # sampling noise alone: about (bins - 1) / window
    calm_ratio = metric_value(text, "probewatch_probe_alert_rate_ratio", probe="drifty")
    assert 0.6 < calm_ratio < 1.4  # ~16% of N(0, 1) is >= 1, as calibrated

    _stream_generations(sidecar, tiny_fp, rng.standard_normal(WINDOW) + 2.0, w, bias, "shifted")
    text = scrape(sidecar.metrics_port)
    shifted_psi = metric_value(text, "probewatch_probe_score_psi", probe="drifty")
    assert shifted_psi > 1.0  # the whole window now comes from N(2, 1)
    rate = metric_value(text, "probewatch_probe_alert_rate", probe="drifty")
    assert 0.78 < rate < 0.9  # P(N(2, 1) >= 1) = 0.84
    assert metric_value(text, "probewatch_probe_alert_rate_ratio", probe="drifty") == pytest.approx(
        rate / ref.expected_alert_rate
    )


def test_a_bundle_without_reference_reports_only_its_alert_rate(tiny_bundles, tiny_fp):
    from probewatch.probes import load_bundles

    specs = {b.manifest.id: ProbeSpec.from_bundle(b) for b in load_bundles(tiny_bundles, expected_fingerprint=tiny_fp)}
    monitor = DriftMonitor(specs, window=10)
    for i in range(10):
        monitor.observe({"dec": (float(i), 1), "avg": (float("nan"), 0)})
    snap = monitor.snapshot()
    assert snap["dec"]["psi"] is None and snap["dec"]["expected_alert_rate"] is None
    assert snap["dec"]["alert_rate"] == pytest.approx(0.9)  # 1..9 of 0..9 are >= the threshold 1.0
    assert snap["avg"]["generations"] == 0  # a probe that scored no token is not observed


def test_window_forgets_the_oldest_generation(drift_bundle, tiny_fp):
    path, _, _, ref = drift_bundle
    from probewatch.probes import load_bundles

    (bundle,) = load_bundles([path], expected_fingerprint=tiny_fp)
    window = ProbeWindow(ProbeSpec.from_bundle(bundle), size=3)
    for value in (5.0, 5.0, -5.0, -5.0, -5.0):
        window.observe(value)
    assert window.n == 3 and window.alerts == 0
    assert window.counts.sum() == 3 and window.counts[0] == 3  # all three in the lowest bin
    assert window.psi() == pytest.approx(ref.psi([3] + [0] * (len(ref.fractions) - 1)))


def test_reference_round_trip_and_bad_references_refused():
    ref = reference_from_scores(np.arange(100.0), 90.0)
    assert ref is not None and len(ref.fractions) == 20 and ref.expected_alert_rate == pytest.approx(0.1)
    assert CalibrationReference.from_json(ref.to_json()) == ref
    assert math.isclose(ref.psi([5] * 20), 0.0, abs_tol=1e-12)
    assert reference_from_scores([1.0, 2.0], 0.0) is None  # too few to bin
    bad = ref.to_json() | {"edges": ref.to_json()["edges"][::-1]}
    with pytest.raises(BundleError, match="strictly increasing"):
        CalibrationReference.from_json(bad)
    with pytest.raises(BundleError, match="fractions"):
        CalibrationReference.from_json(ref.to_json() | {"fractions": [1.0]})
