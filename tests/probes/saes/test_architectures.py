"""Each architecture's encode/decode against the textbook formula; partial encodes; normalisation."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes.saes import (
    SAE_CLASS_REGISTRY,
    JumpReLUSAE,
    StandardSAE,
    TopKSAE,
    build_sae,
    get_sae_class,
    topk_activation,
)
from probewatch.probes.saes.config import hook_names_for_layer
from tests.probes.saes.sae_helpers import direct_latents, random_weights

ARCHS = ["topk", "jumprelu", "standard"]


def make_sae(arch: str, d_in: int = 8, d_sae: int = 32, k: int = 4, normalize: str = "none", seed: int = 0):
    sae_cls, cfg_cls = get_sae_class(arch)
    extra = {"k": k} if arch == "topk" else {}
    cfg = cfg_cls(d_in=d_in, d_sae=d_sae, normalize_activations=normalize, metadata=hook_names_for_layer(2), **extra)
    weights = random_weights(arch, d_in, d_sae, seed)
    return build_sae(cfg, weights), weights


def test_registry_has_the_three_architectures():
    assert {"topk", "jumprelu", "standard"} <= set(SAE_CLASS_REGISTRY)
    assert get_sae_class("relu")[0] is StandardSAE and get_sae_class("jumprelu")[0] is JumpReLUSAE
    assert get_sae_class("topk")[0] is TopKSAE


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_matches_direct_computation(arch):
    sae, w = make_sae(arch)
    x = torch.randn(64, 8) * 2
    assert torch.allclose(sae.encode(x).double(), direct_latents(arch, w, x), atol=1e-5)
    recon = sae.decode(sae.encode(x))
    assert torch.allclose(recon.double(), sae.encode(x).double() @ w["W_dec"].double() + w["b_dec"].double(), atol=1e-5)
    assert torch.allclose(sae(x), recon)


def test_topk_keeps_at_most_k_nonnegative_latents():
    sae, _ = make_sae("topk", k=3)
    acts = sae.encode(torch.randn(100, 8))
    assert ((acts > 0).sum(-1) <= 3).all() and (acts >= 0).all()
    pre = torch.tensor([[3.0, -1.0, 2.0, 5.0]])
    assert torch.equal(topk_activation(pre, 2), torch.tensor([[0.0, 0.0, 0.0, 5.0]]) + torch.tensor([[3.0, 0, 0, 0]]))


def test_jumprelu_threshold_silences_weak_latents():
    sae, w = make_sae("jumprelu")
    pre = sae.hidden_pre(torch.randn(50, 8))
    acts = sae.activation(pre)
    below = (pre <= w["threshold"]) & (pre > 0)
    assert below.any() and (acts[below] == 0).all()
    assert torch.equal(acts[pre > w["threshold"]], pre[pre > w["threshold"]])


@pytest.mark.parametrize("arch", ARCHS)
def test_encode_features_equals_full_encode_columns(arch):
    sae, _ = make_sae(arch)
    x = torch.randn(20, 8)
    ids = [5, 0, 31, 7]
    assert torch.allclose(sae.encode_features(x, ids), sae.encode(x)[:, ids], atol=1e-6)


@pytest.mark.parametrize("normalize", ["constant_norm_rescale", "layer_norm", "expected_average_only_in"])
def test_runtime_normalisation_round_trips(normalize):
    sae, w = make_sae("standard", normalize=normalize)
    x = torch.randn(10, 8) * 5 + 1
    acts, state = sae.encode_with_state(x)
    if normalize == "constant_norm_rescale":
        xn = x * (8**0.5) / x.norm(dim=-1, keepdim=True)
    elif normalize == "layer_norm":
        xn = (x - x.mean(-1, keepdim=True)) / ((x - x.mean(-1, keepdim=True)).std(-1, keepdim=True) + 1e-5)
    else:
        xn = x  # folded into the weights by the trainer; identity at inference (as in SAELens)
    assert torch.allclose(acts.double(), direct_latents("standard", w, xn), atol=1e-5)
    # decode undoes the normalisation: reconstruction lives in the input space
    out = sae(x)
    assert out.shape == x.shape and torch.allclose(out, sae.decode(acts, state))
