"""Figures: FVE / L0 / dead fraction on known cases; CE splice is a no-op for a perfect reconstruction."""

from __future__ import annotations

import torch

from probewatch.probes.saes import build_sae, get_sae_class, hook_names_for_layer
from probewatch.training.sae.evaluate import ce_metrics, reconstruction_metrics, splice_layer_output


def identity_sae(d: int, layer: int = 1):
    """A ReLU SAE with 2d latents (+e_i and -e_i) that reconstructs any input exactly."""
    _, cfg_cls = get_sae_class("standard")
    eye = torch.eye(d)
    weights = {
        "W_enc": torch.cat([eye, -eye], 1),
        "b_enc": torch.zeros(2 * d),
        "W_dec": torch.cat([eye, -eye], 0),
        "b_dec": torch.zeros(d),
    }
    return build_sae(cfg_cls(d_in=d, d_sae=2 * d, metadata=hook_names_for_layer(layer)), weights)


def test_perfect_reconstruction_metrics():
    x = torch.randn(500, 6)
    m = reconstruction_metrics(identity_sae(6), x)
    assert abs(m["fve"] - 1) < 1e-6 and m["nmse"] < 1e-6 and abs(m["cosine"] - 1) < 1e-5
    assert 5.9 <= m["l0"] <= 6.0 and m["dead_fraction"] == 0


def test_dead_and_fve_of_a_zero_sae():
    _, cfg_cls = get_sae_class("standard")
    sae = build_sae(cfg_cls(d_in=4, d_sae=8, metadata=hook_names_for_layer(1)))  # all-zero weights
    x = torch.randn(200, 4) + 3
    m = reconstruction_metrics(sae, x)
    assert m["dead_fraction"] == 1.0 and m["l0"] == 0
    assert m["fve"] < 0  # predicting 0 is worse than predicting the mean


def test_ce_increase_is_zero_for_a_perfect_sae_and_positive_for_zero_ablation(tiny_llama):
    sequences = [list(range(5, 25)), list(range(30, 42)), [7, 8, 9, 10, 11, 3]]
    m = ce_metrics(tiny_llama, identity_sae(64, layer=1), 1, sequences, batch_size=2)
    assert abs(m["ce_increase"]) < 1e-4 and m["n_tokens"] == 18 + 10 + 4
    assert m["ce_zero_ablation"] != m["ce_clean"] and abs(m["loss_recovered"] - 1) < 1e-3


def test_splice_hook_is_removed_and_leaves_position_0(tiny_llama):
    ids = torch.tensor([[3, 4, 5, 6]])
    before = tiny_llama(input_ids=ids).logits
    seen = []
    with splice_layer_output(tiny_llama, 2, lambda h: (seen.append(h.shape), torch.zeros_like(h))[1]):
        changed = tiny_llama(input_ids=ids).logits
    assert seen == [(1, 3, 64)]
    assert torch.allclose(changed[:, 0], before[:, 0], atol=1e-5) and not torch.allclose(changed[:, 1:], before[:, 1:])
    assert torch.allclose(tiny_llama(input_ids=ids).logits, before)
