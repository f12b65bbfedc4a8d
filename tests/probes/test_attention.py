"""Attention-pooling probes on the serving side: the aggregator (streaming == offline on every prefix,
stable at large logits), the bundle (round trip, folding, precise errors) and the runtime's stack columns."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from probewatch.probes import (
    MANIFEST_FILE,
    WEIGHTS_FILE,
    Aggregation,
    CorruptBundleError,
    DimensionMismatchError,
    ProbeRuntime,
    aggregate,
    load_bundle,
    make_aggregator,
    save_bundle,
)
from probewatch.probes.aggregate import token_values
from probewatch.probes.bundle import sha256_bytes
from tests.probes.helpers import FINGERPRINT, make_bundle, make_manifest

ATT = Aggregation("attention")


def _reference(a: np.ndarray, v: np.ndarray) -> float:
    """sum softmax(a) v in float64 via the log-sum-exp shift (numpy, no streaming)."""
    e = np.exp(a - a.max())
    return float((e * v).sum() / e.sum())


def _pairs(n: int, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack([rng.normal(size=n) * scale, rng.normal(size=n)])


def test_known_value_and_limits():
    pairs = np.array([[0.0, 1.0], [math.log(3.0), -1.0]])  # weights 1/4, 3/4
    assert aggregate(pairs, ATT) == pytest.approx(0.25 * 1.0 + 0.75 * -1.0)
    # equal logits: the mean of v; one dominant logit: its v
    v = np.array([1.0, -2.0, 4.0, 0.5])
    assert aggregate(np.column_stack([np.zeros(4), v]), ATT) == pytest.approx(v.mean())
    assert aggregate(np.column_stack([[0.0, 0.0, 80.0, 0.0], v]), ATT) == pytest.approx(4.0)
    assert math.isnan(make_aggregator(ATT).value)
    assert token_values(pairs).tolist() == [1.0, -1.0] and token_values(v).tolist() == v.tolist()


@pytest.mark.parametrize("n", [1, 97, 20_000])
def test_streaming_equals_offline_on_every_prefix(n):
    """Live, the value after every chunk equals the offline value of that prefix, exactly."""
    pairs = _pairs(n, seed=n, scale=3.0)
    rng = np.random.default_rng(1)
    cuts = np.unique(rng.integers(1, n, size=min(n - 1, 60))) if n > 1 else []
    agg = make_aggregator(ATT)
    start = 0
    for cut in [*cuts, n]:
        value = agg.update(pairs[start:cut])
        start = cut
        assert value == aggregate(pairs[:cut], ATT)  # bitwise: token by token either way
    assert agg.count == n
    assert agg.value == pytest.approx(_reference(pairs[:, 0], pairs[:, 1]), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("scale", [1e3, 1e6, 1e12])
def test_large_logits_stay_finite_and_exact(scale):
    """exp(a) overflows float64 at a ~ 710: the running maximum keeps every term in [0, 1]."""
    pairs = _pairs(5000, seed=7, scale=scale)
    for order in (slice(None), slice(None, None, -1)):  # rising and falling maxima
        got = aggregate(pairs[order], ATT)
        assert math.isfinite(got)
        assert got == pytest.approx(_reference(pairs[order, 0], pairs[order, 1]), rel=1e-9, abs=1e-12)
    # a rising run of huge logits: each new maximum rescales the sums to (almost) nothing
    rising = np.column_stack([np.arange(1000) * 1e4, np.arange(1000.0)])
    assert aggregate(rising, ATT) == pytest.approx(999.0)


def test_platt_map_on_values_commutes_with_the_pooling():
    """Calibration folds into the value direction: s -> slope * s + offset moves the aggregate the same way."""
    pairs = _pairs(300, seed=3)
    mapped = pairs.copy()
    mapped[:, 1] = 2.5 * pairs[:, 1] - 1.0
    assert aggregate(mapped, ATT) == pytest.approx(2.5 * aggregate(pairs, ATT) - 1.0)


def _attention_bundle(tmp_path, probe_id="att", standardize=False, seed=0, layer=1, d=8):
    m = make_manifest(probe_id, layer=layer, d=d, kind="attention", aggregation="attention")
    if standardize:
        m.normalization = "standardize"
    from probewatch.probes.synthetic import write_synthetic_bundle

    return write_synthetic_bundle(tmp_path, m, seed=seed, weight_scale="none", bias=0.25)


@pytest.mark.parametrize("standardize", [False, True])
def test_bundle_round_trip_and_folded_form(tmp_path, standardize):
    path, tensors = _attention_bundle(tmp_path, standardize=standardize)
    bundle = load_bundle(path, expected_fingerprint=FINGERPRINT, expected_d_model=8)
    assert bundle.manifest.kind == "attention" and bundle.manifest.aggregation.method == "attention"
    assert set(bundle.tensors) >= {"query", "query_bias", "weight", "bias"}
    for name, value in tensors.items():
        assert torch.equal(bundle.tensors[name], value)
    W, b = bundle.stack_form()
    assert W.shape == (8, 2) and b.shape == (2,)
    x = torch.randn(5, 8, dtype=torch.float64)
    mean = tensors["mean"].double() if standardize else 0.0
    scale = tensors["scale"].double() if standardize else 1.0
    z = (x - mean) / scale
    a = z @ tensors["query"].double() + float(tensors["query_bias"])
    v = z @ tensors["weight"].double() + float(tensors["bias"])
    got = x.float() @ W + b
    assert torch.allclose(got[:, 0].double(), a, atol=1e-4) and torch.allclose(got[:, 1].double(), v, atol=1e-4)


def test_kind_and_aggregation_must_name_each_other(tmp_path):
    m = make_manifest("x", kind="attention", aggregation="mean")
    with pytest.raises(CorruptBundleError, match="must use aggregation.method 'attention'"):
        m.validate()
    m = make_manifest("y", kind="linear", aggregation="attention")
    with pytest.raises(CorruptBundleError, match="kind 'linear' with aggregation.method 'attention'"):
        m.validate()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        (lambda t: t.pop("query"), CorruptBundleError, "weights lack tensor 'query'"),
        (lambda t: t.__setitem__("query", torch.zeros(7)), DimensionMismatchError, "'query' has 7 values"),
        (lambda t: t.__setitem__("weight", torch.zeros(9)), DimensionMismatchError, "'weight' has 9 values"),
        (lambda t: t.__setitem__("query_bias", torch.zeros(2)), DimensionMismatchError, "'query_bias' must hold one"),
        (lambda t: t["query"].__setitem__(3, float("nan")), CorruptBundleError, "'query' contains NaN or Inf"),
        (lambda t: t["bias"].__setitem__(0, float("inf")), CorruptBundleError, "'bias' contains NaN or Inf"),
    ],
)
def test_bad_tensors_are_refused_on_save_and_on_load(tmp_path, change, error, message):
    path, tensors = _attention_bundle(tmp_path)
    bad = {k: v.clone() for k, v in tensors.items()}
    change(bad)
    with pytest.raises(error, match=message):
        save_bundle(tmp_path / "bad", make_manifest("bad", kind="attention", aggregation="attention"), bad)
    # the same tensors written behind save_bundle's back (checksum updated) are refused on load
    save_file(bad, str(path / WEIGHTS_FILE))
    data = json.loads((path / MANIFEST_FILE).read_text())
    data["weights_sha256"] = sha256_bytes((path / WEIGHTS_FILE).read_bytes())
    (path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(error, match=message):
        load_bundle(path)


def test_runtime_stacks_attention_as_two_columns_beside_linear_probes(tmp_path):
    lin, lin_t = make_bundle(tmp_path, "lin", layer=1, seed=1)
    att, att_t = _attention_bundle(tmp_path, "att", seed=2, standardize=True)
    other, _ = make_bundle(tmp_path, "other", layer=3, seed=3)
    runtime = ProbeRuntime([load_bundle(p) for p in (lin, att, other)])
    stack = runtime.stacks[1]
    assert stack.probe_ids == ["lin", "att"] and stack.column_widths == [1, 2] and stack.k == 3
    assert runtime.stacks[3].widths is None and runtime.stacks[3].k == 1  # linear-only stacks are unchanged
    rows = torch.randn(11, 8)
    scores = runtime.score(1, rows)
    per_probe = runtime.score_layers({1: rows, 3: rows})
    assert per_probe["lin"].shape == (11,) and per_probe["att"].shape == (11, 2)
    assert torch.allclose(per_probe["lin"], rows @ lin_t["weight"] + 0.25, atol=1e-5)
    W, b = runtime.bundle("att").stack_form()
    assert torch.allclose(per_probe["att"], rows @ W + b, atol=1e-5)
    # pushdown: the client ships rows @ stack.weight (3 floats a token), the runtime adds the bias
    assert torch.allclose(runtime.score_projections(1, rows @ stack.weight), scores, atol=1e-5)
    with pytest.raises(DimensionMismatchError, match=r"expected \[n, 3\]"):
        runtime.score_projections(1, rows @ stack.weight[:, :2])
