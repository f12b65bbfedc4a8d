"""The synthetic-bundle factory (tests and benchmarks): its bundles satisfy the bundle contract."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes import ProbeRuntime, load_bundle, load_bundles, read_manifest
from probewatch.probes.synthetic import (
    SYNTHETIC_FINGERPRINT,
    synthetic_manifest,
    synthetic_tensors,
    write_synthetic_bundle,
    write_synthetic_bundles,
)


def test_bundles_on_several_layers_load_verified_into_a_runtime(tmp_path):
    paths = write_synthetic_bundles(tmp_path, d_model=16, layers=[1, 3], per_layer=2, prefix="b", n_layers=4)
    assert [p.name for p in paths] == ["b-l1-0", "b-l1-1", "b-l3-0", "b-l3-1"]
    bundles = load_bundles(paths, expected_fingerprint=SYNTHETIC_FINGERPRINT, expected_d_model=16)
    assert [b.manifest.aggregation.method for b in bundles] == ["mean", "max", "mean", "max"]
    runtime = ProbeRuntime(bundles, d_model=16)
    assert sorted(runtime.layers) == [1, 3]
    again = write_synthetic_bundles(tmp_path / "again", d_model=16, layers=[1, 3], per_layer=2, prefix="b")
    assert torch.equal(load_bundle(again[3]).tensors["weight"], bundles[3].tensors["weight"])  # seeded


@pytest.mark.parametrize(("scale", "norm"), [("unit", 1.0), ("sqrt_d", None), ("none", None)])
def test_weight_scales(scale, norm):
    w = synthetic_tensors(64, torch.Generator().manual_seed(0), weight_scale=scale)["weight"]
    raw = torch.randn(64, generator=torch.Generator().manual_seed(0))
    expected = {"unit": raw / raw.norm(), "sqrt_d": raw / 8, "none": raw}[scale]
    assert torch.allclose(w, expected)


def test_a_standardized_manifest_gets_mean_and_scale(tmp_path):
    manifest = synthetic_manifest("s", d_model=8, layer=2, normalization="standardize", threshold=1.5)
    path, tensors = write_synthetic_bundle(tmp_path, manifest, seed=3, bias=0.25)
    assert set(tensors) == {"weight", "bias", "mean", "scale"} and float(tensors["bias"]) == 0.25
    loaded = read_manifest(path)
    assert loaded.threshold.value == 1.5 and loaded.threshold.method == "fixed" and loaded.weights_sha256
    assert torch.equal(load_bundle(path).tensors["mean"], tensors["mean"])
