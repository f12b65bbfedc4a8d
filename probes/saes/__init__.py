"""Sparse autoencoders on the serving path: TopK, JumpReLU and ReLU+L1 (SAELens `standard`).

One module per architecture (config dataclass + SAE class), a registry keyed by cfg.json's
`architecture`, and pure loader/saver functions for the SAELens on-disk format. Imports torch,
safetensors and numpy only.

    sae = load_sae("path/to/sae", expected_d_model=576)   # SAELens folder: cfg.json + sae_weights.safetensors
    acts = sae.encode(rows)                                # [n, d_sae]
"""

from probewatch.probes.saes.config import SAEConfig, hook_names_for_layer, layer_from_hook_name
from probewatch.probes.saes.errors import (
    SAEConfigError,
    SAEDimensionMismatchError,
    SAEError,
    SAEHookError,
    SAENotFoundError,
    SAEWeightsError,
    UnknownSAEArchitectureError,
)
from probewatch.probes.saes.jumprelu import JumpReLUSAE, JumpReLUSAEConfig
from probewatch.probes.saes.loading import (
    FEATURES_FILENAME,
    SAE_CFG_FILENAME,
    SAE_WEIGHTS_FILENAME,
    SPARSITY_FILENAME,
    TRAINING_REPORT_FILENAME,
    build_sae,
    load_feature_descriptions,
    load_sae,
    read_sae_cfg_dict,
    sae_config_from_dict,
    sae_file_checksums,
    save_sae,
)
from probewatch.probes.saes.registry import (
    SAE_CLASS_REGISTRY,
    canonical_architecture,
    get_sae_class,
    register_sae_class,
)
from probewatch.probes.saes.sae import SAE
from probewatch.probes.saes.standard import StandardSAE, StandardSAEConfig
from probewatch.probes.saes.topk import TopKSAE, TopKSAEConfig, topk_activation
from probewatch.probes.saes.watch import behaviour_watchlist, parse_watch_spec

register_sae_class("standard", StandardSAE, StandardSAEConfig)
register_sae_class("jumprelu", JumpReLUSAE, JumpReLUSAEConfig)
register_sae_class("topk", TopKSAE, TopKSAEConfig)

__all__ = [
    "FEATURES_FILENAME",
    "SAE",
    "SAE_CFG_FILENAME",
    "SAE_CLASS_REGISTRY",
    "SAE_WEIGHTS_FILENAME",
    "SPARSITY_FILENAME",
    "TRAINING_REPORT_FILENAME",
    "JumpReLUSAE",
    "JumpReLUSAEConfig",
    "SAEConfig",
    "SAEConfigError",
    "SAEDimensionMismatchError",
    "SAEError",
    "SAEHookError",
    "SAENotFoundError",
    "SAEWeightsError",
    "StandardSAE",
    "StandardSAEConfig",
    "TopKSAE",
    "TopKSAEConfig",
    "UnknownSAEArchitectureError",
    "behaviour_watchlist",
    "build_sae",
    "canonical_architecture",
    "get_sae_class",
    "hook_names_for_layer",
    "layer_from_hook_name",
    "load_feature_descriptions",
    "load_sae",
    "parse_watch_spec",
    "read_sae_cfg_dict",
    "register_sae_class",
    "sae_config_from_dict",
    "sae_file_checksums",
    "save_sae",
    "topk_activation",
]
