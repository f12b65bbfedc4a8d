"""Base class of the inference SAEs: encode residual rows into latents, decode them back.

Computation follows SAELens 6 exactly so that a SAELens SAE gives the same latents here:

    x' = norm_in(x) - b_dec * apply_b_dec_to_input
    hidden_pre = x' @ W_enc + b_enc
    acts = activation(hidden_pre)            # per architecture (ReLU, JumpReLU, TopK)
    x_hat = norm_out(acts @ W_dec + b_dec)

Unlike SAELens the run-time normalisation state (`constant_norm_rescale`, `layer_norm`) is passed
explicitly instead of stored on the module, so one SAE can serve many streams concurrently.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from probewatch.probes.saes.config import SAEConfig
from probewatch.probes.saes.errors import SAEDimensionMismatchError

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}

NormState = tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None


def str_to_dtype(name: str) -> torch.dtype:
    return _DTYPES[name.replace("torch.", "")]


class SAE(nn.Module):
    """A sparse autoencoder over one layer's residual stream.

    Subclasses set `ARCHITECTURE`, `CONFIG_CLASS`, `WEIGHT_NAMES` (the tensors sae_weights.safetensors
    must hold) and implement `activation`. `INDEPENDENT_LATENTS` says whether latent j depends only
    on hidden_pre[j] (ReLU, JumpReLU): then a few latents can be computed without the full encode.
    """

    ARCHITECTURE: ClassVar[str] = ""
    CONFIG_CLASS: ClassVar[type[SAEConfig]] = SAEConfig
    WEIGHT_NAMES: ClassVar[tuple[str, ...]] = ("W_enc", "b_enc", "W_dec", "b_dec")
    INDEPENDENT_LATENTS: ClassVar[bool] = True

    def __init__(self, cfg: SAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.name: str = ""  # set by the loader / bundle that serves it (metrics, messages)
        self.source_path: Path | None = None  # the folder it was loaded from
        dtype = str_to_dtype(cfg.dtype)
        d_in, d_sae = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d_in, d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(d_sae, d_in, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_in, dtype=dtype))
        self.requires_grad_(False)  # inference module; training code flips this on

    # -- properties ------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def layer(self) -> int:
        return self.cfg.layer

    @property
    def dtype(self) -> torch.dtype:
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def weights(self) -> dict[str, torch.Tensor]:
        """The tensors SAELens stores in sae_weights.safetensors, under SAELens's names."""
        return {name: getattr(self, name).detach() for name in self.WEIGHT_NAMES}

    # -- normalisation ---------------------------------------------------------------------------
    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale":
            coeff = (self.cfg.d_in**0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        if mode == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            centred = x - mu
            std = centred.std(dim=-1, keepdim=True)
            return centred / (std + 1e-5), (mu, std)
        return x, None  # none | expected_average_only_in (folded into the weights on save)

    def _norm_out(self, x: torch.Tensor, state: NormState) -> torch.Tensor:
        mode = self.cfg.normalize_activations
        if mode == "constant_norm_rescale" and isinstance(state, torch.Tensor):
            return x / state
        if mode == "layer_norm" and isinstance(state, tuple):
            mu, std = state
            return x * std + mu
        return x

    def _check_rows(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.cfg.d_in:
            raise SAEDimensionMismatchError(
                f"SAE ({self.ARCHITECTURE}, d_in={self.cfg.d_in}) got rows of width {x.shape[-1]}"
            )

    def process_in(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        """SAELens `process_sae_in`: cast, normalise, subtract b_dec when apply_b_dec_to_input."""
        self._check_rows(x)
        x = x.to(device=self.device, dtype=self.dtype)
        x, state = self._norm_in(x)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x, state

    # -- encode / decode -------------------------------------------------------------------------
    def hidden_pre(self, x: torch.Tensor) -> torch.Tensor:
        sae_in, _ = self.process_in(x)
        return sae_in @ self.W_enc + self.b_enc

    def activation(self, hidden_pre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """[..., d_in] residual rows -> [..., d_sae] latent activations."""
        return self.activation(self.hidden_pre(x))

    def decode(self, acts: torch.Tensor, norm_state: NormState = None) -> torch.Tensor:
        """[..., d_sae] latents -> [..., d_in] reconstruction (pass `norm_state` from encode_with_state
        for SAEs with run-time normalisation)."""
        return self._norm_out(acts @ self.W_dec + self.b_dec, norm_state)

    def encode_with_state(self, x: torch.Tensor) -> tuple[torch.Tensor, NormState]:
        sae_in, state = self.process_in(x)
        return self.activation(sae_in @ self.W_enc + self.b_enc), state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction of x (what gets spliced into the model)."""
        acts, state = self.encode_with_state(x)
        return self.decode(acts, state)

    def encode_features(self, x: torch.Tensor, feature_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """[..., d_in] -> [..., m] activations of the latents `feature_ids` only.

        For architectures whose latents are independent (ReLU, JumpReLU) only those columns of
        W_enc are multiplied, so watching a handful of features costs d_in*m, not d_in*d_sae.
        TopK must rank every latent, so it encodes fully and gathers.
        """
        ids = torch.as_tensor(feature_ids, dtype=torch.long, device=self.device)
        if not self.INDEPENDENT_LATENTS:
            return self.encode(x).index_select(-1, ids)
        sae_in, _ = self.process_in(x)
        pre = sae_in @ self.W_enc.index_select(1, ids) + self.b_enc.index_select(0, ids)
        return self._activation_subset(pre, ids)

    def _activation_subset(self, hidden_pre: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Activation for a column subset (only for INDEPENDENT_LATENTS architectures)."""
        return self.activation(hidden_pre)

    def extra_repr(self) -> str:
        return f"arch={self.ARCHITECTURE}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}, hook={self.cfg.hook_name}"
