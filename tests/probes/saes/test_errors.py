"""Bad SAE input gives one clear error each: the folder, the field, what to do."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from probewatch.probes.errors import BundleError, CorruptBundleError, DimensionMismatchError
from probewatch.probes.saes import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SAEConfigError,
    SAEDimensionMismatchError,
    SAEHookError,
    SAENotFoundError,
    SAEWeightsError,
    UnknownSAEArchitectureError,
    load_sae,
)
from tests.probes.saes.sae_helpers import random_weights, write_saelens_folder


def _edit_cfg(path, **changes):
    cfg = json.loads((path / SAE_CFG_FILENAME).read_text())
    cfg.update(changes)
    (path / SAE_CFG_FILENAME).write_text(json.dumps(cfg))


def test_d_in_differs_from_the_models_d_model(tmp_path):
    write_saelens_folder(tmp_path, "topk", d_in=8)
    with pytest.raises(SAEDimensionMismatchError, match=r"reads d_in=8 but the model has d_model=576"):
        load_sae(tmp_path, expected_d_model=576)
    assert issubclass(SAEDimensionMismatchError, DimensionMismatchError)


def test_rows_of_the_wrong_width(tmp_path):
    write_saelens_folder(tmp_path, "topk", d_in=8)
    with pytest.raises(SAEDimensionMismatchError, match="got rows of width 9"):
        load_sae(tmp_path).encode(torch.randn(2, 9))


def test_unknown_architecture(tmp_path):
    write_saelens_folder(tmp_path, "standard")
    _edit_cfg(tmp_path, architecture="gated")
    with pytest.raises(
        UnknownSAEArchitectureError,
        match=r"unknown SAE architecture 'gated'; this runtime serves jumprelu, standard, topk",
    ):
        load_sae(tmp_path)
    assert issubclass(UnknownSAEArchitectureError, BundleError)


@pytest.mark.parametrize("arch,key", [("jumprelu", "threshold"), ("topk", "W_dec"), ("standard", "b_enc")])
def test_missing_weights_key(tmp_path, arch, key):
    weights = random_weights(arch, 8, 32)
    weights.pop(key)
    write_saelens_folder(tmp_path, arch, weights=weights)
    with pytest.raises(SAEWeightsError, match=rf"missing weights key\(s\) '{key}'"):
        load_sae(tmp_path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_nan_in_weights(tmp_path, bad):
    weights = random_weights("topk", 8, 32)
    weights["W_enc"][3, 4] = bad
    write_saelens_folder(tmp_path, "topk", weights=weights)
    with pytest.raises(SAEWeightsError, match=r"tensor 'W_enc' contains 1 NaN/Inf value"):
        load_sae(tmp_path)


def test_wrong_shape(tmp_path):
    weights = random_weights("standard", 8, 32)
    weights["W_dec"] = weights["W_dec"].T.contiguous()
    write_saelens_folder(tmp_path, "standard", weights=weights)
    with pytest.raises(SAEWeightsError, match=r"'W_dec' has shape \(8, 32\), expected \(32, 8\)"):
        load_sae(tmp_path)


def test_unexpected_tensor_means_the_architecture_is_wrong(tmp_path):
    weights = random_weights("jumprelu", 8, 32)
    write_saelens_folder(tmp_path, "standard", weights=weights)
    with pytest.raises(SAEWeightsError, match=r"unexpected tensor\(s\) 'threshold'"):
        load_sae(tmp_path)


def test_missing_files_and_bad_json(tmp_path):
    with pytest.raises(SAENotFoundError, match="SAE folder not found"):
        load_sae(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SAENotFoundError, match="cfg.json: missing"):
        load_sae(tmp_path / "empty")
    write_saelens_folder(tmp_path / "noweights", "topk")
    (tmp_path / "noweights" / SAE_WEIGHTS_FILENAME).unlink()
    with pytest.raises(SAENotFoundError, match="sae_weights.safetensors: missing"):
        load_sae(tmp_path / "noweights")
    write_saelens_folder(tmp_path / "badjson", "topk")
    (tmp_path / "badjson" / SAE_CFG_FILENAME).write_text("{not json")
    with pytest.raises(SAEConfigError, match="not valid JSON"):
        load_sae(tmp_path / "badjson")
    write_saelens_folder(tmp_path / "trunc", "topk")
    (tmp_path / "trunc" / SAE_WEIGHTS_FILENAME).write_bytes(b"\x00\x01garbage")
    with pytest.raises(SAEWeightsError, match="not a readable safetensors file"):
        load_sae(tmp_path / "trunc")


def test_bad_config_values(tmp_path):
    write_saelens_folder(tmp_path, "topk", d_sae=32)
    _edit_cfg(tmp_path, k=64)
    with pytest.raises(SAEConfigError, match=r"0 < k <= d_sae \(32\)"):
        load_sae(tmp_path)
    _edit_cfg(tmp_path, k=4, normalize_activations="covariance_whitening")
    with pytest.raises(SAEConfigError, match="normalize_activations 'covariance_whitening' is not supported"):
        load_sae(tmp_path)
    _edit_cfg(tmp_path, normalize_activations="none", d_in=None)
    with pytest.raises(SAEConfigError, match="d_in must be a positive integer"):
        load_sae(tmp_path)
    assert issubclass(SAEConfigError, CorruptBundleError)


def test_hook_point_we_do_not_capture_and_layer_mismatch(tmp_path):
    write_saelens_folder(tmp_path / "mlp", "standard", hook_name="blocks.2.hook_mlp_out")
    with pytest.raises(SAEHookError, match="not a residual-stream point"):
        load_sae(tmp_path / "mlp")
    write_saelens_folder(tmp_path / "l2", "standard")
    with pytest.raises(SAEHookError, match="reads layer 2 .* but layer 5 was expected"):
        load_sae(tmp_path / "l2", expected_layer=5)


def test_non_trivial_finetuning_scaling_factor_is_refused(tmp_path):
    weights = random_weights("standard", 8, 32)
    write_saelens_folder(tmp_path, "standard", weights=weights)
    save_file({**weights, "scaling_factor": torch.full((32,), 2.0)}, str(tmp_path / SAE_WEIGHTS_FILENAME))
    with pytest.raises(SAEWeightsError, match="non-trivial 'scaling_factor'"):
        load_sae(tmp_path)
    save_file({**weights, "scaling_factor": torch.ones(32)}, str(tmp_path / SAE_WEIGHTS_FILENAME))
    load_sae(tmp_path)  # all-ones is what SAELens wrote for a while: dropped, as SAELens does
