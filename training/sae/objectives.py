"""Training objectives, one per architecture (the serving classes hold the parameters).

All three train on activations scaled by a constant c so that E||c·x||^2 = d_in (SAELens's
`expected_average_only_in`), which makes the sparsity coefficients transferable across models;
the exporter folds c back into the weights.

- TopK (Gao et al. 2024): MSE; fixed L0 = k; unit-norm decoder rows (gradient component along
  each row removed before the step, rows renormalised after); dead latents get the AuxK loss:
  the top-k_aux *dead* latents reconstruct the live latents' residual error (k_aux = d_in/2,
  coefficient 1/32, scaled down when fewer latents are dead).
- ReLU + L1 (Anthropic "April update"): MSE + lambda * sum_i f_i ||W_dec,i||, lambda warmed up
  linearly over the first 5% of steps; decoder norms free (the penalty uses them); decoder
  initialised at norm 0.1, encoder as its transpose.
- JumpReLU (Rajamanoharan et al. 2024): MSE + lambda * L0 where the step function's gradient
  reaches the threshold through a rectangle-kernel straight-through estimator (bandwidth eps);
  thresholds projected onto >= 0 after each step.
ReLU and JumpReLU revive dead latents by resampling (`resample_dead_latents`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from probewatch.probes.saes.jumprelu import JumpReLUSAE
from probewatch.probes.saes.sae import SAE
from probewatch.probes.saes.topk import TopKSAE, topk_activation


@dataclass
class StepOutput:
    loss: torch.Tensor
    mse: torch.Tensor  # sum over dims, mean over rows (normalised space)
    acts: torch.Tensor  # [b, d_sae] (detached)
    parts: dict[str, float]


def _rectangle(x: torch.Tensor) -> torch.Tensor:
    return ((x > -0.5) & (x < 0.5)).to(x)


class _JumpReLUFn(torch.autograd.Function):
    """pre * (pre > threshold); d/dthreshold via the rectangle-kernel STE, d/dpre exact."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold).to(pre)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_pre = (pre > threshold).to(pre) * grad
        grad_threshold = (-(threshold / bw) * _rectangle((pre - threshold) / bw) * grad).sum(0)
        return grad_pre, grad_threshold, None


class _StepFn(torch.autograd.Function):
    """1[pre > threshold]; gradient to the threshold only (DeepMind's L0 estimator)."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[None, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        return None, (-(1.0 / bw) * _rectangle((pre - threshold) / bw) * grad).sum(0), None


def _warm(value: float, step: int, warmup_steps: int) -> float:
    return value * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else value


class Objective:
    """Loss of one architecture, plus the parameter constraints it keeps between steps."""

    unit_norm_decoder = False

    def __init__(self, sae: SAE, settings: Any, total_steps: int) -> None:
        self.sae = sae
        self.s = settings
        self.total_steps = total_steps

    def trainable(self) -> list[torch.nn.Parameter]:
        return [getattr(self.sae, n) for n in self.sae.WEIGHT_NAMES]

    def init_weights(self, sample: torch.Tensor, generator: torch.Generator) -> None:
        """Decoder rows random directions, encoder = decoder^T, b_dec = data mean, b_enc = 0."""
        sae = self.sae
        d_sae, d_in = sae.cfg.d_sae, sae.cfg.d_in
        w = torch.randn(d_sae, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True) * self.decoder_init_norm()
        with torch.no_grad():
            sae.W_dec.copy_(w)
            sae.W_enc.copy_(w.T)
            sae.b_enc.zero_()
            sae.b_dec.copy_(sample.mean(0))

    def decoder_init_norm(self) -> float:
        return 1.0

    def forward(self, x: torch.Tensor, step: int, dead: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    @torch.no_grad()
    def before_step(self) -> None:
        w = self.sae.W_dec
        if self.unit_norm_decoder and w.grad is not None:
            w.grad -= (w.grad * w).sum(1, keepdim=True) * w  # keep rows on the unit sphere

    @torch.no_grad()
    def after_step(self) -> None:
        if self.unit_norm_decoder:
            self.sae.W_dec.div_(self.sae.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-8))

    def _recon(self, x: torch.Tensor, acts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        recon = acts @ self.sae.W_dec + self.sae.b_dec
        return recon, (recon - x).pow(2).sum(-1).mean()


class TopKObjective(Objective):
    unit_norm_decoder = True
    sae: TopKSAE

    def forward(self, x: torch.Tensor, step: int, dead: torch.Tensor) -> StepOutput:
        sae = self.sae
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = topk_activation(pre, sae.cfg.k)
        recon, mse = self._recon(x, acts)
        loss = mse
        parts = {"mse": float(mse.detach())}
        n_dead = int(dead.sum())
        if n_dead and self.s.aux_k_coefficient > 0:
            k_aux = x.shape[1] // 2
            scale = min(n_dead / k_aux, 1.0)
            k_aux = min(k_aux, n_dead)
            residual = (x - recon).detach()
            masked = torch.where(dead[None], pre, torch.full_like(pre, -torch.inf))
            vals, idx = masked.topk(k_aux, dim=-1, sorted=False)
            aux_acts = torch.zeros_like(pre).scatter(-1, idx, vals)
            aux = (aux_acts @ sae.W_dec - residual).pow(2).sum(-1).mean()
            loss = loss + self.s.aux_k_coefficient * scale * aux
            parts["aux_k"] = float(aux.detach())
        return StepOutput(loss, mse, acts.detach(), parts)


class StandardObjective(Objective):
    def decoder_init_norm(self) -> float:
        return 0.1

    def forward(self, x: torch.Tensor, step: int, dead: torch.Tensor) -> StepOutput:
        sae = self.sae
        acts = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc)
        recon, mse = self._recon(x, acts)
        lam = _warm(self.s.l1_coefficient, step, int(0.05 * self.total_steps))
        sparsity = (acts * sae.W_dec.norm(dim=1)).sum(-1).mean()
        return StepOutput(
            mse + lam * sparsity, mse, acts.detach(), {"mse": float(mse.detach()), "l1": float(sparsity.detach())}
        )


class JumpReLUObjective(Objective):
    sae: JumpReLUSAE

    def init_weights(self, sample: torch.Tensor, generator: torch.Generator) -> None:
        super().init_weights(sample, generator)
        with torch.no_grad():
            self.sae.threshold.fill_(self.s.jumprelu_init_threshold)

    def forward(self, x: torch.Tensor, step: int, dead: torch.Tensor) -> StepOutput:
        sae = self.sae
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = _JumpReLUFn.apply(pre, sae.threshold, self.s.jumprelu_bandwidth)
        recon, mse = self._recon(x, acts)
        lam = _warm(self.s.l0_coefficient, step, int(0.05 * self.total_steps))
        l0 = _StepFn.apply(pre, sae.threshold, self.s.jumprelu_bandwidth).sum(-1).mean()
        return StepOutput(
            mse + lam * l0, mse, acts.detach(), {"mse": float(mse.detach()), "l0_loss": float(l0.detach())}
        )

    @torch.no_grad()
    def after_step(self) -> None:
        self.sae.threshold.clamp_(min=0.0)


OBJECTIVES: dict[str, type[Objective]] = {
    "topk": TopKObjective,
    "standard": StandardObjective,
    "jumprelu": JumpReLUObjective,
}


@torch.no_grad()
def resample_dead_latents(
    sae: SAE, x: torch.Tensor, dead: torch.Tensor, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> int:
    """Anthropic-style resampling: point each dead latent at a badly reconstructed input.

    Inputs are drawn with probability proportional to their squared reconstruction error; the
    dead latent's decoder row becomes that input's (centred) direction, its encoder column the
    same direction scaled to 0.2x the mean live encoder norm, its bias 0; Adam's moments for
    the touched rows/columns are reset so stale momentum does not kill it again.
    """
    ids = dead.nonzero().squeeze(1)
    if ids.numel() == 0:
        return 0
    recon = sae.decode(sae.encode(x))
    err = (x - recon).pow(2).sum(-1)
    probs = err / err.sum()
    picks = torch.multinomial(probs, ids.numel(), replacement=ids.numel() > x.shape[0], generator=generator)
    directions = x[picks] - sae.b_dec
    directions = directions / directions.norm(dim=1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    enc_norm = sae.W_enc[:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
    dec_norm = sae.W_dec[alive].norm(dim=1).mean() if alive.any() else torch.tensor(1.0)
    sae.W_dec[ids] = directions * dec_norm
    sae.W_enc[:, ids] = directions.T * enc_norm * 0.2
    sae.b_enc[ids] = 0.0
    for param, index, dim in ((sae.W_dec, ids, 0), (sae.W_enc, ids, 1), (sae.b_enc, ids, 0)):
        state = optimizer.state.get(param, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in state:
                state[key].index_fill_(dim, index, 0.0)
    return int(ids.numel())
