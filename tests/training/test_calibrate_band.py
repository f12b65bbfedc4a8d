"""`probewatch calibrate` sets the uncertainty band: automatically where look-alike negatives raise the threshold
above the control set's (the band reaches down to the control threshold), explicitly with --uncertain-from, never
with --uncertainty-band off; a band at or above the threshold is a one-line error. It draws threshold_band.png."""

from __future__ import annotations

import json

import pytest

from probewatch.cli.main import main
from probewatch.data.dialogue import write_dialogues
from probewatch.probes import load_bundle, read_manifest
from tests.probes.helpers import make_bundle
from tests.training.helpers import control_dialogues


@pytest.fixture(scope="module")
def setup(tiny_folder, tmp_path_factory):
    """(bundle, control.jsonl, hard.jsonl): a random-direction bundle for the tiny model, two benign sets."""
    from probewatch.models import fingerprint_folder

    root = tmp_path_factory.mktemp("band")
    bundle, _ = make_bundle(
        root, "p", layer=1, d=64, seed=0, aggregation="mean", fingerprint=fingerprint_folder(tiny_folder)
    )
    control, hard = root / "control.jsonl", root / "hard.jsonl"
    write_dialogues(control, control_dialogues(30, seed=1))
    write_dialogues(hard, control_dialogues(30, seed=5))
    return bundle, control, hard


def calibrate(capsys, tiny_folder, bundle, control, *extra: str) -> tuple[int, dict | None, str]:
    args = [
        "calibrate",
        "--bundle",
        str(bundle),
        "--model",
        str(tiny_folder),
        "--control",
        str(control),
        "--fpr",
        "0.1",
    ]
    code = main([*args, *extra, "--json", "--quiet"])
    out, err = capsys.readouterr()
    return code, (json.loads(out.strip().splitlines()[-1]) if code == 0 else None), err


def test_hard_negatives_set_the_band_down_to_the_control_threshold(setup, tiny_folder, tmp_path, capsys):
    bundle, control, hard = setup
    out = tmp_path / "auto"
    code, summary, err = calibrate(
        capsys,
        tiny_folder,
        bundle,
        control,
        "--hard-negatives",
        str(hard),
        "--hard-negative-fpr",
        "0.0",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert summary["set_by"] == "hard_negatives" and summary["control_threshold"] < summary["threshold"]
    band = summary["uncertainty_band"]
    assert band["set_by"] == "control_threshold" and band["uncertain_from"] == summary["control_threshold"]
    m = load_bundle(out).manifest  # checksum valid, band validated on load
    assert (m.threshold.uncertain_from, m.threshold.value) == (summary["control_threshold"], summary["threshold"])
    assert m.extra["operating_point"]["uncertainty_band"]["set_by"] == "control_threshold"
    control_shares, hard_shares = band["shares"]["control"], band["shares"]["hard negatives"]
    # the control threshold flags at most 10% of the control set; now they are uncertain instead of alerts
    assert control_shares["flagged"] + control_shares["uncertain"] == control_shares["recorded"] <= 0.1 + 1e-9
    assert control_shares["uncertain"] > 0 and hard_shares["flagged"] == 0.0
    assert m.extra["operating_point"]["uncertainty_band"]["control_uncertain"] == control_shares["uncertain"]
    plot = out / "threshold_band.png"
    assert summary["plot"] == str(plot) and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000


def test_explicit_off_and_refused_bands(setup, tiny_folder, tmp_path, capsys):
    bundle, control, _ = setup
    code, plain, err = calibrate(capsys, tiny_folder, bundle, control, "--out", str(tmp_path / "plain"), "--no-plot")
    assert code == 0, err
    # without look-alike negatives the threshold is the control one: auto makes no band, the manifest has no key
    assert plain["uncertainty_band"]["uncertain_from"] is None and plain["plot"] is None
    assert "uncertain_from" not in json.loads((tmp_path / "plain" / "manifest.json").read_text())["threshold"]
    assert not (tmp_path / "plain" / "threshold_band.png").exists()
    lower = plain["threshold"] - 0.5
    code, summary, err = calibrate(
        capsys, tiny_folder, bundle, control, "--uncertain-from", str(lower), "--out", str(tmp_path / "explicit")
    )
    assert code == 0, err
    assert summary["uncertainty_band"]["set_by"] == "explicit"
    assert read_manifest(tmp_path / "explicit").threshold.uncertain_from == pytest.approx(lower)
    # re-calibrating the banded bundle with the band off clears it
    code, summary, err = calibrate(
        capsys, tiny_folder, tmp_path / "explicit", control, "--uncertainty-band", "off", "--out", str(tmp_path / "off")
    )
    assert code == 0, err
    assert read_manifest(tmp_path / "off").threshold.uncertain_from is None
    for bad in (str(plain["threshold"]), str(plain["threshold"] + 1), "nan"):
        code, _, err = calibrate(
            capsys, tiny_folder, bundle, control, "--uncertain-below", bad, "--out", str(tmp_path / "bad")
        )
        assert code != 0 and "--uncertain-from: the uncertainty band must start below the threshold" in err
        assert not (tmp_path / "bad").exists()
