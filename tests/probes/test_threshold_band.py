"""The optional uncertainty band of a threshold (`threshold.uncertain_from`): validated, round-tripped, and absent
from a bundle without one (the manifest older runtimes read stays as it was)."""

from __future__ import annotations

import json
import math

import pytest

from probewatch.probes import CorruptBundleError, Manifest, Threshold, load_bundle, save_bundle
from probewatch.probes.bundle import MANIFEST_FILE, read_manifest
from tests.probes.helpers import FINGERPRINT, make_bundle, make_manifest


def test_a_band_round_trips_through_save_and_load(tmp_path):
    path, tensors = make_bundle(tmp_path, threshold=1.5)
    bundle = load_bundle(path, expected_fingerprint=FINGERPRINT)
    bundle.manifest.threshold.uncertain_from = -0.25
    save_bundle(tmp_path / "banded", bundle.manifest, tensors)
    data = json.loads((tmp_path / "banded" / MANIFEST_FILE).read_text())
    assert data["threshold"]["value"] == 1.5 and data["threshold"]["uncertain_from"] == -0.25
    again = load_bundle(tmp_path / "banded", expected_fingerprint=FINGERPRINT).manifest.threshold
    assert (again.value, again.uncertain_from) == (1.5, -0.25)
    assert [again.in_band(s) for s in (-0.3, -0.25, 0.0, 1.49, 1.5, math.nan)] == [
        False,
        True,
        True,
        True,
        False,
        False,
    ]


def test_no_band_is_todays_manifest(tmp_path):
    path, _ = make_bundle(tmp_path, threshold=1.0)
    data = json.loads((path / MANIFEST_FILE).read_text())
    assert "uncertain_from" not in data["threshold"]  # an older runtime (Threshold(**raw)) still reads it
    threshold = read_manifest(path).threshold
    assert threshold.uncertain_from is None and not threshold.in_band(0.99)
    data["threshold"]["uncertain_from"] = None  # an explicit null means no band too
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    assert read_manifest(path).threshold.uncertain_from is None


@pytest.mark.parametrize(
    ("band", "value", "why"),
    [
        (1.0, 1.0, r"threshold.uncertain_from \(1.0\) must be below threshold.value \(1.0\)"),
        (2.0, 1.0, r"must be below threshold.value"),
        (math.inf, 1.0, "threshold.uncertain_from must be a finite number or null, got inf"),
        (-math.inf, 1.0, "must be a finite number or null, got -inf"),
        (math.nan, 1.0, "must be a finite number or null, got nan"),
        ("0.5", 1.0, "must be a finite number or null, got '0.5'"),
        (True, 1.0, "must be a finite number or null, got True"),
        (0.0, math.inf, "threshold.value must be a finite number when it has an uncertainty band, got inf"),
    ],
)
def test_a_bad_band_is_refused_naming_the_field(tmp_path, band, value, why):
    path, _ = make_bundle(tmp_path)
    data = json.loads((path / MANIFEST_FILE).read_text())
    data["threshold"].update(value=value, uncertain_from=band)
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(CorruptBundleError, match=why):
        read_manifest(path)
    manifest = make_manifest()
    manifest.threshold = Threshold(value=value, uncertain_from=band)  # type: ignore[arg-type]
    with pytest.raises(CorruptBundleError, match=why):
        manifest.validate()


def test_from_dict_and_to_dict_agree():
    manifest = make_manifest(threshold=0.75)
    manifest.threshold.uncertain_from = 0.1
    again = Manifest.from_dict(json.loads(json.dumps(manifest.to_dict())))
    assert again.threshold == manifest.threshold
