"""sae_feature bundles: self-verifying on disk, scored through ProbeRuntime.score_layers, each SAE
encoding a block of rows once for all its probes and the metrics watch-list."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from probewatch.probes import (
    BundleError,
    BundleNotFoundError,
    ChecksumMismatchError,
    CorruptBundleError,
    DimensionMismatchError,
    ProbeRuntime,
    load_bundle,
    load_bundles,
)
from probewatch.probes.saes import FEATURES_FILENAME, SAE_WEIGHTS_FILENAME, load_sae
from probewatch.probes.saes.sae import SAE
from tests.probes.helpers import make_bundle
from tests.probes.saes.sae_helpers import direct_latents, make_feature_bundle, write_saelens_folder


@pytest.fixture()
def sae_dir(tmp_path):
    path = tmp_path / "saes" / "tiny-topk"
    write_saelens_folder(path, "topk", d_in=8, d_sae=32, k=6, seed=3)
    (path / FEATURES_FILENAME).write_text(
        json.dumps(
            {"features": [{"id": 3, "description": "the word 'lie'"}, {"id": 9, "description": "refusal opener"}]}
        )
    )
    return path


def _direct_score(sae_dir, tensors, rows, standardize=False):
    w = dict(load_sae(sae_dir).weights().items())
    acts = direct_latents("topk", w, rows, k=6)[:, tensors["feature_ids"]]
    if standardize:
        acts = (acts - tensors["mean"].double()) / tensors["scale"].double()
    return acts @ tensors["weight"].double() + float(tensors["bias"][0])


@pytest.mark.parametrize("standardize", [False, True])
def test_feature_bundle_scores_through_score_layers(tmp_path, sae_dir, standardize):
    _, tensors = make_feature_bundle(
        tmp_path / "bundles", sae_dir, "feat", [3, 9, 17], [1.5, -0.5, 2.0], standardize=standardize
    )
    make_bundle(tmp_path / "bundles", "lin", layer=2, seed=4)
    runtime = ProbeRuntime(load_bundles([tmp_path / "bundles"]))
    assert runtime.layers == [2] and runtime.sae_layers == [2] and list(runtime.sae_groups) == ["tiny-topk"]
    rows = torch.randn(12, 8) * 2
    out = runtime.score_layers({2: rows})
    assert set(out) == {"feat", "lin"} and out["feat"].shape == (12,)
    assert torch.allclose(out["feat"].double(), _direct_score(sae_dir, tensors, rows, standardize), atol=1e-4)
    assert torch.allclose(out["lin"], runtime.score(2, rows)[:, 0])  # linear path unchanged


def test_one_encode_per_sae_for_all_its_probes_and_the_watch_list(tmp_path, sae_dir, monkeypatch):
    make_feature_bundle(tmp_path / "b", sae_dir, "f1", [3, 9], [1.0, 1.0])
    make_feature_bundle(tmp_path / "b", sae_dir, "f2", [9, 20, 31], [0.5, -1.0, 0.25])
    bundles = load_bundles([tmp_path / "b"])
    assert bundles[0].sae is bundles[1].sae  # shared SAE object
    runtime = ProbeRuntime(bundles, watch={"tiny-topk": [3, 9, 5]})
    calls = []
    original = SAE.process_in  # every encode path starts here

    def counting(self, x):
        calls.append(x.shape)
        return original(self, x)

    monkeypatch.setattr(SAE, "process_in", counting)
    rows = torch.randn(7, 8)
    out = runtime.score_all({2: rows})
    assert len(calls) == 1
    assert set(out.scores) == {"f1", "f2"}
    feats = out.features["tiny-topk"]
    assert feats.feature_ids == [3, 9, 5] and feats.layer == 2 and feats.values.shape == (7, 3)
    assert feats.descriptions == ["the word 'lie'", "refusal opener", ""]
    full = bundles[0].sae.encode(rows)
    assert torch.allclose(feats.values, full[:, [3, 9, 5]], atol=1e-6)


def test_watch_only_sae_and_set_watch(tmp_path, sae_dir):
    make_bundle(tmp_path / "b", "lin", layer=1, seed=1)
    sae = load_sae(sae_dir)
    runtime = ProbeRuntime(load_bundles([tmp_path / "b"]), saes=[sae])
    assert runtime.layers == [1, 2] and runtime.sae_layers == [2]
    assert runtime.score_all({2: torch.randn(3, 8)}).features == {}  # nothing watched yet
    runtime.set_watch("tiny-topk", [1, 2])
    out = runtime.score_all({1: torch.randn(3, 8), 2: torch.randn(3, 8)})
    assert set(out.scores) == {"lin"} and out.features["tiny-topk"].feature_ids == [1, 2]
    with pytest.raises(BundleError, match="no SAE named 'nope'"):
        runtime.set_watch("nope", [1])
    with pytest.raises(BundleError, match=r"outside \[0, 32\)"):
        runtime.set_watch("tiny-topk", [32])
    with pytest.raises(BundleError, match="watch-list names SAE 'other'"):
        ProbeRuntime([], d_model=8, saes=[sae], watch={"other": [1]})


def test_relu_and_jumprelu_groups_encode_only_the_read_latents(tmp_path):
    for arch in ("jumprelu", "standard"):
        sae_path = tmp_path / "saes" / arch
        w = write_saelens_folder(sae_path, arch, d_in=8, d_sae=32)
        _, t = make_feature_bundle(tmp_path / f"b-{arch}", sae_path, f"p-{arch}", [4, 30], [1.0, -2.0])
        runtime = ProbeRuntime(load_bundles([tmp_path / f"b-{arch}"]))
        rows = torch.randn(5, 8)
        expected = direct_latents(arch, w, rows)[:, [4, 30]] @ t["weight"].double() + 0.5
        assert torch.allclose(runtime.score_layers({2: rows})[f"p-{arch}"].double(), expected, atol=1e-5)


def test_embedded_sae_makes_a_self_contained_bundle(tmp_path, sae_dir):
    path, _ = make_feature_bundle(tmp_path / "b", sae_dir, "emb", [1], [1.0], embed=True)
    moved = tmp_path / "elsewhere" / "emb"
    shutil.copytree(path, moved)
    shutil.rmtree(sae_dir)
    bundle = load_bundle(moved)
    assert bundle.sae is not None and (moved / "sae" / SAE_WEIGHTS_FILENAME).is_file()


def test_bundle_pins_the_sae_by_checksum(tmp_path, sae_dir):
    make_feature_bundle(tmp_path / "b", sae_dir, "p", [1, 2], [1.0, 1.0])
    write_saelens_folder(sae_dir, "topk", d_in=8, d_sae=32, k=6, seed=99)  # retrained in place
    with pytest.raises(ChecksumMismatchError, match="pinned by bundle 'p'; the SAE changed"):
        load_bundle(tmp_path / "b" / "p")


def test_bad_feature_tensors(tmp_path, sae_dir):
    make_feature_bundle(tmp_path / "c", sae_dir, "big", [1, 40], [1.0, 1.0])
    with pytest.raises(DimensionMismatchError, match=r"feature_ids must lie in \[0, 32\)"):
        load_bundle(tmp_path / "c" / "big")
    with pytest.raises(DimensionMismatchError, match="has 1 values but there are 2 feature_ids"):
        make_feature_bundle(tmp_path / "d", sae_dir, "short", [1, 2], [1.0])
    with pytest.raises(CorruptBundleError, match="repeats a latent"):
        make_feature_bundle(tmp_path / "e", sae_dir, "dup", [1, 1], [1.0, 1.0])


def test_missing_sae(tmp_path, sae_dir):
    make_feature_bundle(tmp_path / "b", sae_dir, "p", [1, 2], [1.0, 1.0])
    shutil.rmtree(sae_dir)
    with pytest.raises(BundleNotFoundError, match=r"SAE 'tiny-topk' not found \(tried"):
        load_bundle(tmp_path / "b" / "p")


def test_sae_for_another_model_width_is_refused(tmp_path):
    sae_path = tmp_path / "wide"
    write_saelens_folder(sae_path, "topk", d_in=16, d_sae=32)
    make_feature_bundle(tmp_path / "b", sae_path, "p", [1], [1.0])  # written; refused when loaded
    with pytest.raises(DimensionMismatchError, match="reads d_in=16 but the model has d_model=8"):
        load_bundle(tmp_path / "b" / "p")


def test_bundle_copied_elsewhere_still_finds_its_sae(tmp_path, sae_dir, monkeypatch):
    path, _ = make_feature_bundle(tmp_path / "b", sae_dir, "p", [1, 2], [1.0, 1.0])
    moved = tmp_path / "deeper" / "still" / "p"
    shutil.copytree(path, moved)  # the relative path no longer resolves; the export-time path does
    assert load_bundle(moved).sae is not None
    # and by name under $PROBEWATCH_HOME/saes/<model>/<name> once the original folder is gone
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    shutil.copytree(sae_dir, tmp_path / "home" / "saes" / "tiny" / "tiny-topk")
    shutil.rmtree(sae_dir)
    assert load_bundle(moved).sae is not None
