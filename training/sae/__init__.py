"""Sparse-autoencoder training: corpus -> cached activations -> training -> figures -> features -> probes.

Modules: `corpus` (text), `activations` (cache), `objectives` (per-architecture losses),
`trainer` (loop, checkpoints), `evaluate` (FVE, L0, dead latents, CE increase), `interpret`
(features.json), `probe` (sae_feature bundles), `pipeline` (what `probewatch sae` runs).
The SAE classes themselves live on the serving side: `probewatch.probes.saes`.
"""
