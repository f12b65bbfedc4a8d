"""Model fingerprint: stable, dtype-independent, sensitive to weight changes, folder == model."""

from __future__ import annotations

import torch

from probewatch.models.fingerprint import fingerprint_folder, fingerprint_model
from tests.conftest import make_tiny_model


def test_fingerprint_is_stable_and_formatted():
    a = fingerprint_model(make_tiny_model("llama", seed=0))
    b = fingerprint_model(make_tiny_model("llama", seed=0))
    assert a == b
    assert a.startswith("pwfp1:") and len(a) == len("pwfp1:") + 32


def test_fingerprint_differs_between_checkpoints_and_layouts():
    prints = {
        fingerprint_model(make_tiny_model(layout, seed=seed))
        for layout in ("llama", "qwen2", "gpt2")
        for seed in (0, 1)
    }
    assert len(prints) == 6


def test_fingerprint_sees_a_change_in_a_middle_layer_only():
    """A fine-tune that leaves embeddings alone must still change the fingerprint."""
    model = make_tiny_model("llama")
    before = fingerprint_model(model)
    with torch.no_grad():
        model.model.layers[2].self_attn.q_proj.weight[0, 0] += 0.5
    assert fingerprint_model(model) != before


def test_fingerprint_ignores_dtype(tmp_path):
    model = make_tiny_model("llama")
    assert fingerprint_model(model) == fingerprint_model(model.to(torch.bfloat16))


def test_folder_fingerprint_equals_loaded_model_fingerprint(tmp_path):
    model = make_tiny_model("qwen2")
    model.save_pretrained(tmp_path)
    assert fingerprint_folder(tmp_path) == fingerprint_model(model)


def test_reference_fingerprint_folder_matches(reference):
    assert fingerprint_folder(reference.path) == reference.fingerprint


def test_model_built_from_config_keeps_its_fingerprint_when_saved(tmp_path):
    """from_config leaves `architectures` unset until save_pretrained writes it; the fingerprint must not move."""
    from transformers import AutoModelForCausalLM

    model = make_tiny_model("llama")
    assert not model.config.architectures
    before = fingerprint_model(model)
    model.save_pretrained(tmp_path)
    assert fingerprint_folder(tmp_path) == before
    assert fingerprint_model(AutoModelForCausalLM.from_pretrained(tmp_path, use_kernels=False)) == before
