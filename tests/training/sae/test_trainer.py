"""SAE training on synthetic sparse data: each architecture learns, checkpoints resume exactly,
the normalisation scale folds into SAELens-compatible weights, dead latents are revived."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes.saes import load_sae, save_sae
from probewatch.training.sae.activations import ActivationStore
from probewatch.training.sae.evaluate import reconstruction_metrics
from probewatch.training.sae.objectives import resample_dead_latents
from probewatch.training.sae.trainer import SAETrainingError, SAETrainSettings, fold_scale, new_training_sae, train_sae


def synthetic_store(n: int = 6000, d: int = 16, n_features: int = 48, seed: int = 0) -> ActivationStore:
    """Rows = sparse non-negative combinations of fixed unit directions, plus an offset and a scale."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(n_features, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    codes = (torch.rand(n, n_features, generator=g) < 0.06).float() * torch.rand(n, n_features, generator=g) * 3
    acts = (codes @ feats + 0.3) * 7.0
    return ActivationStore(
        acts=acts,
        seq=torch.arange(n),
        pos=torch.ones(n, dtype=torch.long),
        tok=torch.zeros(n, dtype=torch.long),
        is_eval=torch.arange(n) % 10 == 0,
        layer=1,
        fingerprint="pwfp1:test",
        sequences=[],
    )


SETTINGS = {
    "topk": {"architecture": "topk", "k": 6},
    "relu": {"architecture": "relu", "l1_coefficient": 0.5},
    "jumprelu": {"architecture": "jumprelu", "l0_coefficient": 0.02},
}


@pytest.mark.parametrize("arch", list(SETTINGS))
def test_each_architecture_learns(tmp_path, arch):
    store = synthetic_store()
    settings = SAETrainSettings(d_sae=96, batch_size=256, epochs=6, lr=3e-3, dead_window_tokens=3000, **SETTINGS[arch])
    result = train_sae(store, settings, tmp_path, progress=False)
    m = reconstruction_metrics(result.sae, store.acts[store.is_eval])
    assert m["fve"] > 0.6, m
    assert result.sae.cfg.architecture() == settings.architecture and result.sae.cfg.normalize_activations == "none"
    if arch == "topk":
        assert m["l0"] <= 6
    assert result.history and result.history[-1]["epoch"] == 6


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result(tmp_path):
    store = synthetic_store(n=3000)
    settings = SAETrainSettings(
        architecture="topk",
        k=4,
        d_sae=32,
        batch_size=256,
        epochs=3,
        lr=2e-3,
        checkpoint_every_steps=5,
        dead_window_tokens=500,
    )
    full = train_sae(store, settings, tmp_path / "full", progress=False)
    partial = train_sae(store, settings, tmp_path / "resumed", progress=False, max_steps=13)
    assert partial.steps == 13 and (tmp_path / "resumed" / "checkpoint" / "state.json").is_file()
    resumed = train_sae(store, settings, tmp_path / "resumed", progress=False)
    assert resumed.steps == full.steps
    for name in full.sae.WEIGHT_NAMES:
        assert torch.allclose(getattr(full.sae, name), getattr(resumed.sae, name), atol=1e-6), name


def test_checkpoint_of_another_run_is_refused(tmp_path):
    store = synthetic_store(n=2000)
    base = {"architecture": "topk", "k": 4, "d_sae": 32, "batch_size": 256, "epochs": 1, "checkpoint_every_steps": 2}
    train_sae(store, SAETrainSettings(**base), tmp_path, progress=False, max_steps=2)
    with pytest.raises(SAETrainingError, match="belongs to a run with other settings"):
        train_sae(store, SAETrainSettings(**{**base, "k": 5}), tmp_path, progress=False)
    train_sae(store, SAETrainSettings(**{**base, "k": 5}), tmp_path, progress=False, restart=True)


def test_bad_settings():
    with pytest.raises(SAETrainingError, match="unknown architecture 'gated'"):
        SAETrainSettings(architecture="gated")
    with pytest.raises(SAETrainingError, match="--k must be in 1..d_sae"):
        SAETrainSettings(architecture="topk", d_sae=8, k=9)
    with pytest.raises(SAETrainingError, match="lower --batch-size"):
        train_sae(synthetic_store(n=100), SAETrainSettings(d_sae=8, k=2, batch_size=512), "/tmp/never", progress=False)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard"])
def test_folding_the_scale_gives_the_same_latents_on_raw_inputs(tmp_path, arch):
    settings = SAETrainSettings(architecture=arch, d_sae=24, k=3)
    sae = new_training_sae(8, settings, layer=2)
    with torch.no_grad():
        for name in sae.WEIGHT_NAMES:
            getattr(sae, name).copy_(torch.randn_like(getattr(sae, name)) * 0.3)
        if arch == "jumprelu":
            sae.threshold.abs_()
    sae.requires_grad_(False)
    c = 0.37
    x = torch.randn(20, 8) * 5
    raw = fold_scale(sae, c)
    assert torch.allclose(raw.encode(x), sae.encode(c * x), atol=1e-5)
    assert torch.allclose(raw(x), sae(c * x) / c, atol=1e-4)
    save_sae(raw, tmp_path)  # and it is a valid SAELens folder
    assert torch.allclose(load_sae(tmp_path).encode(x), raw.encode(x), atol=1e-6)


def test_resampling_revives_dead_latents():
    settings = SAETrainSettings(architecture="relu", d_sae=16)
    sae = new_training_sae(8, settings, layer=1)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(8, 16) * 0.1)
        sae.W_dec.copy_(torch.randn(16, 8) * 0.1)
        sae.b_enc.fill_(-100.0)  # everything dead
    opt = torch.optim.Adam([getattr(sae, n) for n in sae.WEIGHT_NAMES])
    x = torch.randn(64, 8) + 2
    dead = torch.ones(16, dtype=torch.bool)
    assert (sae.encode(x) > 0).sum() == 0
    n = resample_dead_latents(sae, x, dead, opt, torch.Generator().manual_seed(0))
    assert n == 16 and (sae.encode(x) > 0).any(0).sum() >= 8
