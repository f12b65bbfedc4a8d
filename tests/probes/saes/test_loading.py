"""SAELens on-disk format: files written in SAELens's documented layout load here with the same
latents as a direct computation; our saver writes files SAELens reads (checked against the real
SAELens when it is installed)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from probewatch.probes.saes import (
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    layer_from_hook_name,
    load_sae,
    save_sae,
)
from probewatch.probes.saes.errors import SAEHookError
from tests.probes.saes.sae_helpers import direct_latents, write_saelens_folder

ARCHS = ["topk", "jumprelu", "standard"]


@pytest.mark.parametrize("layout", ["v6", "pre6"])
@pytest.mark.parametrize("arch", ARCHS)
def test_saelens_layout_loads_with_direct_latents(tmp_path, arch, layout):
    w = write_saelens_folder(tmp_path, arch, layout=layout)
    sae = load_sae(tmp_path, expected_d_model=8, expected_layer=2)
    assert sae.cfg.architecture() == arch and sae.layer == 2 and sae.cfg.model_name == "tiny-llama"
    x = torch.randn(40, 8)
    assert torch.allclose(sae.encode(x).double(), direct_latents(arch, w, x), atol=1e-5)


def test_apply_b_dec_to_input_false_is_honoured(tmp_path):
    w = write_saelens_folder(tmp_path, "standard", apply_b_dec_to_input=False)
    x = torch.randn(5, 8)
    assert torch.allclose(
        load_sae(tmp_path).encode(x).double(), direct_latents("standard", w, x, apply_b_dec_to_input=False), atol=1e-5
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_save_then_load_round_trip(tmp_path, arch):
    write_saelens_folder(tmp_path / "src", arch)
    sae = load_sae(tmp_path / "src")
    save_sae(sae, tmp_path / "dst")
    again = load_sae(tmp_path / "dst")
    x = torch.randn(30, 8)
    assert torch.equal(sae.encode(x), again.encode(x))
    cfg = json.loads((tmp_path / "dst" / SAE_CFG_FILENAME).read_text())
    # SAELens 6 layout: architecture at the top, hook + provenance under metadata, version >= 6
    assert cfg["architecture"] == arch and cfg["d_in"] == 8 and cfg["d_sae"] == 32
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert int(cfg["metadata"]["sae_lens_version"].split(".")[0]) >= 6
    assert set(load_file(str(tmp_path / "dst" / SAE_WEIGHTS_FILENAME))) == set(sae.WEIGHT_NAMES)


def test_half_precision_storage_loads_as_float32(tmp_path):
    write_saelens_folder(tmp_path / "src", "topk")
    sae = load_sae(tmp_path / "src")
    save_sae(sae, tmp_path / "half", weights_dtype=torch.float16)
    stored = load_file(str(tmp_path / "half" / SAE_WEIGHTS_FILENAME))
    assert stored["W_enc"].dtype == torch.float16
    half = load_sae(tmp_path / "half")
    assert half.W_enc.dtype == torch.float32
    assert torch.allclose(half.W_enc, sae.W_enc, atol=1e-3)


@pytest.mark.parametrize(
    ("name", "layer"),
    [
        ("blocks.7.hook_resid_post", 7),
        ("blocks.7.hook_resid_pre", 6),
        ("model.layers.7", 7),
        ("layers.7", 7),
        ("model.language_model.layers.7", 7),
        ("transformer.h.7", 7),
    ],
)
def test_hook_names_map_onto_the_layer_contract(name, layer):
    assert layer_from_hook_name(name) == layer


@pytest.mark.parametrize("name", ["blocks.7.hook_mlp_out", "blocks.3.attn.hook_z", "blocks.0.hook_resid_pre", "embed"])
def test_hook_names_we_do_not_capture_are_refused(name):
    with pytest.raises(SAEHookError):
        layer_from_hook_name(name)


def test_hf_hook_name_only(tmp_path):
    write_saelens_folder(tmp_path, "standard", hook_name="")
    cfg = json.loads((tmp_path / SAE_CFG_FILENAME).read_text())
    cfg["metadata"].pop("hook_name")
    cfg["metadata"]["hf_hook_name"] = "model.layers.5"
    (tmp_path / SAE_CFG_FILENAME).write_text(json.dumps(cfg))
    assert load_sae(tmp_path).layer == 5


@pytest.mark.parametrize("arch", ARCHS)
def test_real_saelens_round_trip(tmp_path, arch):
    """Ours -> SAELens and SAELens -> ours give identical latents (skipped without sae-lens)."""
    sae_lens = pytest.importorskip("sae_lens")
    write_saelens_folder(tmp_path / "ours_src", arch)
    ours = load_sae(tmp_path / "ours_src")
    save_sae(ours, tmp_path / "ours")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "ours"))
    x = torch.randn(25, 8)
    assert torch.allclose(theirs.encode(x), ours.encode(x), atol=1e-5)
    assert theirs.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    theirs.save_model(str(tmp_path / "theirs"))
    back = load_sae(tmp_path / "theirs", expected_layer=2)
    assert torch.allclose(back.encode(x), theirs.encode(x), atol=1e-5)
    assert torch.allclose(back(x), theirs(x), atol=1e-5)
