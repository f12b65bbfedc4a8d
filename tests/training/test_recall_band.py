"""The recall band of a trained bundle: where the control set looks so much like the behaviour that its 1%
threshold keeps less than half of the calibration positives, `probewatch train` ships a band down to where half
are kept (bounded by 5% of control and 20% of the behaviour's negatives), the report and docs/quality.md say
why and what it records, and the live scoring path records a score inside it as `uncertain`."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from probewatch.data.dialogue import Dialogue, Message
from probewatch.probes import load_bundle
from probewatch.training.band import CONTROL, NEGATIVES, POSITIVES
from probewatch.training.pipeline import TrainConfig, train
from probewatch.training.quality_doc import render_markdown
from tests.training.helpers import write_synthetic
from tests.training.test_quality_doc import RUN


def look_alike_control(n: int = 200, share_like: float = 0.03, seed: int = 7) -> list[Dialogue]:
    """Benign traffic on the pool's prompts (t10..t69) of which `share_like` answers in the behaviour's own
    words (t100..t149), the rest in the negatives' words: its 1% threshold sits among the look-alikes, above
    most positives, while its 5% threshold is already down among the ordinary answers."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lo = 100 if i < share_like * n else 150
        prompt = " ".join(f"t{rng.randrange(10, 70)}" for _ in range(rng.randint(3, 8)))
        answer = " ".join(f"t{rng.randrange(lo, lo + 50)}" for _ in range(rng.randint(2, 6)))
        out.append(Dialogue([Message("user", prompt), Message("assistant", answer)], 0, f"control:{i}", "control"))
    return out


@pytest.fixture(scope="module")
def trained(tiny_loaded, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recall_band")
    data, control = write_synthetic(tmp, look_alike_control(), n_groups=30)
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            out=tmp / "b",
            layers=[1, 3],
            progress=False,
            parity_check=False,
            band_control_fpr=0.2,  # review load allowed: the recall aim binds (the default 5% binds first here)
        ),
        loaded=tiny_loaded,
    )
    return result, json.loads(result.report_path.read_text())


def test_a_threshold_keeping_too_little_recall_ships_a_recall_band(trained, tiny_loaded):
    result, report = trained
    bundle = load_bundle(result.bundle_path, expected_fingerprint=tiny_loaded.fingerprint)
    m, op = bundle.manifest, report["operating_point"]
    assert op["set_by"] == "control" and op["min_recall"] == 0.5 and op["band_control_fpr"] == 0.2
    assert op["recall_threshold"] < op["threshold"]  # the shipped threshold keeps under half the calibration positives
    edge = max(op["recall_threshold"], op["band_floor"], op["hard_negative_threshold"])
    assert m.threshold.uncertain_from == pytest.approx(edge) and edge < m.threshold.value
    assert report["threshold"]["uncertain_from"] == m.threshold.uncertain_from
    band = op["band"]
    assert band == m.extra["operating_point"]["uncertainty_band"] and band["set_by"] == "recall"
    assert m.extra["operating_point"]["recall_threshold"] == op["recall_threshold"]
    pos, neg, control = (band["shares"][k] for k in (POSITIVES, NEGATIVES, CONTROL))
    assert pos["recorded"] > pos["flagged"] == pytest.approx(op["shipped"]["recall"])  # the band buys recall
    assert neg["flagged"] == pytest.approx(op["shipped"]["fpr_negatives"])
    for shares in (pos, neg, control):
        assert shares["recorded"] == pytest.approx(shares["flagged"] + shares["uncertain"])
    # half the calibration positives kept; review load bounded on the held-out control half (small-sample slack)
    assert op["recall_threshold"] == pytest.approx(edge) and pos["recorded"] >= 0.25 and control["recorded"] <= 0.3


def test_the_live_scoring_path_records_a_band_score_as_uncertain(trained, tiny_loaded):
    """The sidecar's spec reads the bundle's band: a final aggregate in [edge, threshold) is uncertain, not an
    alert (the gRPC path of `in_band`: tests/server/sidecar)."""
    from probewatch.server.sidecar.specs import ProbeSpec as LiveSpec

    result, _ = trained
    spec = LiveSpec.from_bundle(load_bundle(result.bundle_path, expected_fingerprint=tiny_loaded.fingerprint))
    assert spec.uncertain_from is not None and spec.uncertain_from < spec.threshold
    assert spec.in_band((spec.uncertain_from + spec.threshold) / 2) and spec.in_band(spec.uncertain_from)
    assert not spec.in_band(spec.threshold) and not spec.in_band(float(np.nextafter(spec.uncertain_from, -np.inf)))


def test_quality_doc_gives_the_band_its_edge_reason_and_what_it_records(trained):
    _, report = trained
    text = render_markdown({"deception": report}, {}, RUN)
    section = text.split("## Thresholds on production-like traffic")[1].split("\n## ")[0]
    row = [line for line in section.splitlines() if line.startswith("| `deception` |")][0]
    band = report["operating_point"]["band"]
    recorded = band["shares"][POSITIVES]["recorded"]
    assert f"≥ {report['threshold']['uncertain_from']:.2f} (recall): {recorded:.3f} / " in row
    assert "keeps less than half of the calibration positives" in text


@pytest.mark.parametrize("value", [0.005, 1.0])
def test_a_band_control_fpr_below_the_target_fpr_or_of_all_traffic_is_refused_before_any_work(value, tmp_path):
    from probewatch.training.train_config import TrainingError, check_config

    config = TrainConfig(behaviour="deception", fpr=0.01, band_control_fpr=value, out=tmp_path / "b")
    with pytest.raises(TrainingError, match=r"--band-control-fpr must be in \[--fpr, 1\)"):
        check_config(config, 4, "tiny")
