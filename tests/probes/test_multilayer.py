"""Multi-layer linear probes in the bundle format and the offline runtime: the manifest's `layers`
(validation, round-trip, hook names), the weight split per layer, and a token score that is exactly
the concatenated-feature logistic probe's decision_function."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from probewatch.probes import Manifest, ProbeRuntime, load_bundle, read_manifest, save_bundle
from probewatch.probes.errors import CorruptBundleError, DimensionMismatchError
from probewatch.probes.runtime import join_partials
from tests.probes.helpers import make_manifest

D = 8


def _multi(layers: list[int], kind: str = "linear", normalization: str = "none", probe_id: str = "ml") -> Manifest:
    m = make_manifest(probe_id, layer=layers[0], d=D, kind=kind, normalization=normalization)
    m.layers = list(layers)
    return m


def _tensors(n_layers: int, seed: int = 0, standardize: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {"weight": torch.randn(n_layers * D, generator=g), "bias": torch.tensor([0.3])}
    if standardize:
        out["mean"] = torch.randn(n_layers * D, generator=g)
        out["scale"] = torch.rand(n_layers * D, generator=g) + 0.5
    return out


@pytest.mark.parametrize(
    ("layers", "kind", "message"),
    [
        ([2, 1], "linear", "layers must be sorted and unique, got [2, 1]"),
        ([1, 1], "linear", "layers must be sorted and unique, got [1, 1]"),
        ([], "linear", "layers must be a non-empty list of non-negative ints, got []"),
        ([1, -2], "linear", "layers must be a non-empty list of non-negative ints, got [1, -2]"),
        ([1, 4], "linear", "layer(s) [4] outside the model (model.n_layers=4: layers 0..3)"),
        (
            [1, 2],
            "attention",
            "kind 'attention' reads one layer; only ('linear', 'mean_diff', 'lat', 'contrast') probes",
        ),
    ],
)
def test_manifest_layers_validation_names_the_problem(layers, kind, message):
    m = _multi([1, 2])
    data = m.to_dict()
    data["layers"] = layers
    data["kind"] = kind
    if kind == "attention":
        data["aggregation"]["method"] = "attention"
    with pytest.raises(CorruptBundleError) as err:
        Manifest.from_dict(data)
    assert message in str(err.value)


def test_manifest_layer_must_be_the_first_of_layers():
    data = _multi([1, 3]).to_dict()
    data["layer"] = 3
    with pytest.raises(CorruptBundleError, match=r"layer \(3\) must be the first of layers \[1, 3\]"):
        Manifest.from_dict(data)


def test_manifest_round_trip_and_hook_names(tmp_path):
    m = _multi([0, 2, 3])
    assert m.all_layers == [0, 2, 3]
    assert m.hook_names == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post", "blocks.3.hook_resid_post"]
    path = save_bundle(tmp_path / "ml", m, _tensors(3))
    on_disk = json.loads((path / "manifest.json").read_text())
    assert on_disk["layers"] == [0, 2, 3] and on_disk["layer"] == 0
    again = read_manifest(path)
    assert again.layers == [0, 2, 3] and again.to_dict() == m.to_dict()
    # `layers` alone is enough: `layer` is its first entry
    del on_disk["layer"]
    assert Manifest.from_dict(on_disk).layer == 0
    # a single-layer manifest writes no `layers` (what older runtimes read) and means [layer]
    single = make_manifest("p", layer=2, d=D)
    assert "layers" not in single.to_dict() and single.all_layers == [2]
    assert single.hook_names == [single.hook_name] == ["blocks.2.hook_resid_post"]


def test_weight_size_must_be_d_model_times_layers(tmp_path):
    with pytest.raises(DimensionMismatchError, match=r"'weight' has 8 values .* d_model × len\(layers\) = 8 × 2 = 16"):
        save_bundle(tmp_path / "bad", _multi([1, 2]), _tensors(1))
    # per-layer directions as a [len(layers), d] matrix are the same numbers
    t = _tensors(2)
    t["weight"] = t["weight"].reshape(2, D)
    bundle = load_bundle(save_bundle(tmp_path / "ok", _multi([1, 2]), t))
    forms = bundle.layer_forms()
    assert sorted(forms) == [1, 2]
    np.testing.assert_array_equal(forms[2][0][:, 0].numpy(), t["weight"][1].numpy())
    # the bias sits on the first layer only
    assert forms[1][1].tolist() == pytest.approx([0.3]) and forms[2][1].tolist() == [0.0]


@pytest.mark.parametrize("standardize", [False, True])
def test_offline_score_equals_concat_logistic_decision_function(tmp_path, standardize):
    rng = np.random.default_rng(0)
    n, layers = 200, [1, 3]
    X = {layer: rng.standard_normal((n, D)).astype(np.float32) + layer for layer in layers}
    y = (X[1][:, 0] - X[3][:, 2] + 0.5 * rng.standard_normal(n) > -2).astype(int)
    concat = np.concatenate([X[layer] for layer in layers], axis=1)
    mean, scale = concat.mean(0), concat.std(0)
    clf = LogisticRegression(C=1.0, max_iter=1000).fit((concat - mean) / scale if standardize else concat, y)
    tensors = {
        "weight": torch.tensor(clf.coef_[0], dtype=torch.float32),
        "bias": torch.tensor([clf.intercept_[0]], dtype=torch.float32),
    }
    if standardize:
        tensors["mean"], tensors["scale"] = torch.tensor(mean), torch.tensor(scale)
    m = _multi(layers, normalization="standardize" if standardize else "none")
    runtime = ProbeRuntime([load_bundle(save_bundle(tmp_path / "ml", m, tensors))])
    assert runtime.layers == [1, 3] and runtime.multi_layer == {"ml": [1, 3]}
    rows = {layer: torch.from_numpy(X[layer]) for layer in layers}
    got = runtime.score_layers(rows)["ml"].numpy()
    want = clf.decision_function((concat - mean) / scale if standardize else concat)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # partial=True: each layer's column as it is; their sum in layer order is the score, bit for bit
    parts = [runtime.score_layers({layer: rows[layer]}, partial=True)["ml"] for layer in layers]
    np.testing.assert_array_equal(join_partials(parts).numpy(), got)
    # without every layer the probe is left out, never scored from part of its layers
    assert "ml" not in runtime.score_layers({1: rows[1]})


def test_multi_layer_probe_shares_each_layer_stack(tmp_path):
    single = make_manifest("s3", layer=3, d=D)
    paths = [
        save_bundle(tmp_path / "ml", _multi([1, 3]), _tensors(2, seed=1)),
        save_bundle(tmp_path / "s3", single, {"weight": torch.randn(D), "bias": torch.tensor([0.0])}),
    ]
    runtime = ProbeRuntime([load_bundle(p) for p in paths])
    assert runtime.stacks[1].probe_ids == ["ml"] and runtime.stacks[3].probe_ids == ["ml", "s3"]
    x = {layer: torch.randn(5, D) for layer in (1, 3)}
    out = runtime.score_layers(x)
    assert set(out) == {"ml", "s3"} and out["ml"].shape == (5,)
    w, b = runtime.bundle("ml").linear_form()
    want = torch.cat([x[1], x[3]], dim=1) @ w + b
    np.testing.assert_allclose(out["ml"].numpy(), want.numpy(), rtol=1e-5, atol=1e-5)
