"""TopK SAE (Gao et al. 2024; SAELens architecture `topk`).

acts = ReLU of the k largest pre-activations per row, zero elsewhere. Sparsity is fixed (L0 <= k)
rather than tuned through a penalty, which makes training on a small CPU budget predictable.
`rescale_acts_by_decoder_norm` (SAELens option) ranks and decodes as if W_dec rows had unit norm.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probewatch.probes.saes.config import SAEConfig
from probewatch.probes.saes.errors import SAEConfigError
from probewatch.probes.saes.sae import SAE, NormState


@dataclass
class TopKSAEConfig(SAEConfig):
    k: int = 100
    rescale_acts_by_decoder_norm: bool = False

    ARCHITECTURE = "topk"

    def validate(self, source: str = "cfg.json") -> None:
        super().validate(source)
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 0 < self.k <= self.d_sae:
            raise SAEConfigError(f"{source}: topk needs 0 < k <= d_sae ({self.d_sae}), got k={self.k!r}")


def topk_activation(hidden_pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest entries of the last axis (ReLU'd), zero the rest (SAELens `TopK`)."""
    values, indices = torch.topk(hidden_pre, k=k, dim=-1, sorted=False)
    return torch.zeros_like(hidden_pre).scatter_(-1, indices, values.relu())


class TopKSAE(SAE):
    ARCHITECTURE = "topk"
    CONFIG_CLASS = TopKSAEConfig
    INDEPENDENT_LATENTS = False  # a latent's value depends on every other latent's rank

    cfg: TopKSAEConfig

    def hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        pre = super().hidden_pre(x)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return pre

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        return topk_activation(hidden_pre, self.cfg.k)

    def encode_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        sae_in, state = self.process_in(x)
        pre = sae_in @ self.W_enc + self.b_enc
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return self.activation(pre), state

    def decode(self, acts: torch.Tensor, norm_state: NormState = None) -> torch.Tensor:
        if self.cfg.rescale_acts_by_decoder_norm:
            acts = acts / self.W_dec.norm(dim=-1)
        return self._norm_out(acts @ self.W_dec + self.b_dec, norm_state)
