"""ReLU SAE trained with an L1 sparsity penalty (SAELens architecture `standard`).

acts = ReLU(hidden_pre). The L1 coefficient is a training setting (training/sae), not part of the
inference config, exactly as in SAELens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probewatch.probes.saes.config import SAEConfig
from probewatch.probes.saes.sae import SAE


@dataclass
class StandardSAEConfig(SAEConfig):
    ARCHITECTURE = "standard"


class StandardSAE(SAE):
    ARCHITECTURE = "standard"
    CONFIG_CLASS = StandardSAEConfig
    INDEPENDENT_LATENTS = True

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(hidden_pre)
