"""JumpReLU SAE (Rajamanoharan et al. 2024; Gemma Scope; SAELens architecture `jumprelu`).

acts = ReLU(hidden_pre) * (hidden_pre > threshold), one learned threshold per latent, stored as
`threshold` in sae_weights.safetensors. The threshold lets a latent stay silent on weak evidence
without the shrinkage an L1 penalty causes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from probewatch.probes.saes.config import SAEConfig
from probewatch.probes.saes.sae import SAE


@dataclass
class JumpReLUSAEConfig(SAEConfig):
    ARCHITECTURE = "jumprelu"


class JumpReLUSAE(SAE):
    ARCHITECTURE = "jumprelu"
    CONFIG_CLASS = JumpReLUSAEConfig
    WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec", "threshold")
    INDEPENDENT_LATENTS = True

    def __init__(self, cfg: JumpReLUSAEConfig) -> None:
        super().__init__(cfg)
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=self.W_enc.dtype), requires_grad=False)

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre) * (hidden_pre > self.threshold).to(hidden_pre.dtype)

    def _activation_subset(self, hidden_pre: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        threshold = self.threshold.index_select(0, ids)
        return torch.relu(hidden_pre) * (hidden_pre > threshold).to(hidden_pre.dtype)
