"""Scoring runtime: stacked GEMM equals per-bundle scoring; pushdown; errors."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes import (
    BundleError,
    DimensionMismatchError,
    ProbeRuntime,
    UnknownProbeError,
    load_bundles,
)
from tests.probes.helpers import make_bundle


@pytest.fixture()
def runtime(tmp_path):
    make_bundle(tmp_path, "a", layer=1, seed=1, standardize=True)
    make_bundle(tmp_path, "b", layer=1, seed=2)
    make_bundle(tmp_path, "c", layer=3, seed=3, standardize=True)
    return ProbeRuntime(load_bundles([tmp_path]))


def _direct(bundle, rows: torch.Tensor) -> torch.Tensor:
    """The textbook score w.((x-mean)/scale)+b, computed without folding."""
    t = bundle.tensors
    x = rows.double()
    if bundle.manifest.normalization == "standardize":
        x = (x - t["mean"].double()) / t["scale"].double()
    return x @ t["weight"].double() + float(t["bias"][0])


def test_layers_and_stacks(runtime):
    assert runtime.layers == [1, 3]
    assert runtime.stacks[1].probe_ids == ["a", "b"] and runtime.stacks[1].weight.shape == (8, 2)
    assert runtime.stacks[3].probe_ids == ["c"]


def test_stacked_scores_equal_direct_scores(runtime):
    rows = torch.randn(50, 8)
    for layer, stack in runtime.stacks.items():
        scores = runtime.score(layer, rows)
        assert scores.shape == (50, stack.k)
        for j, probe_id in enumerate(stack.probe_ids):
            assert torch.allclose(scores[:, j].double(), _direct(runtime.bundle(probe_id), rows), atol=1e-4)


def test_pushdown_projections_give_the_same_scores(runtime):
    rows = torch.randn(20, 8)
    projections = rows @ runtime.stacks[1].weight  # what the client computes on its device
    assert torch.allclose(runtime.score_projections(1, projections), runtime.score(1, rows), atol=1e-5)


def test_score_layers_maps_probe_ids(runtime):
    rows = {1: torch.randn(4, 8), 3: torch.randn(4, 8), 7: torch.randn(4, 8)}
    out = runtime.score_layers(rows)
    assert set(out) == {"a", "b", "c"} and all(v.shape == (4,) for v in out.values())


def test_errors(runtime, tmp_path):
    with pytest.raises(DimensionMismatchError, match=r"expected \[n, 8\]"):
        runtime.score(1, torch.randn(3, 9))
    with pytest.raises(DimensionMismatchError, match=r"expected \[n, 2\]"):
        runtime.score_projections(1, torch.randn(3, 3))
    with pytest.raises(UnknownProbeError, match="unknown probe 'zzz'; loaded probes: a, b, c"):
        runtime.bundle("zzz")
    with pytest.raises(BundleError, match="no linear probe reads layer 2"):
        runtime.score(2, torch.randn(1, 8))
    make_bundle(tmp_path / "other", "d", d=16)
    with pytest.raises(DimensionMismatchError, match="reads d_model=16"):
        ProbeRuntime(list(runtime.bundles) + load_bundles([tmp_path / "other"]))
    with pytest.raises(BundleError, match="share the probe id 'a'"):
        ProbeRuntime(list(runtime.bundles) + [runtime.bundles[0]])
