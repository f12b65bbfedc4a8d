"""SAE quality figures: reconstruction (normalised MSE, FVE), sparsity (L0, dead latents) and the
next-token cross-entropy increase when the reconstruction replaces the layer's output.

Definitions (docs/sae.md repeats them next to the shipped SAE's numbers):
- normalised MSE = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over held-out rows;
  fraction of variance explained (FVE) = 1 - normalised MSE.
- L0 = mean number of non-zero latents per row.
- dead fraction = latents that never fire on the rows evaluated.
- CE increase = CE(model with layer L's output replaced by SAE(x)) - CE(clean model) on held-out
  text, nats per token; loss recovered = (CE_zero - CE_sae) / (CE_zero - CE_clean), where
  CE_zero replaces the layer's output with zeros. Position 0 (the attention sink, never used
  for training or scoring) and rows above `max_norm` (massive activations, dropped from training:
  see training/sae/activations.py) are left untouched in all three runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from probewatch.probes.saes.sae import SAE


@torch.no_grad()
def reconstruction_metrics(sae: SAE, acts: torch.Tensor, batch_size: int = 8192) -> dict[str, Any]:
    """FVE, normalised MSE, L0 and dead / dense latent fractions of `sae` on rows `acts` (raw space)."""
    n = acts.shape[0]
    mean = acts.mean(0)
    sq_err = sq_var = l0 = cos = 0.0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    for start in range(0, n, batch_size):
        x = acts[start : start + batch_size].to(sae.device, sae.dtype)
        z, state = sae.encode_with_state(x)
        x_hat = sae.decode(z, state)
        sq_err += float((x - x_hat).pow(2).sum())
        sq_var += float((x - mean).pow(2).sum())
        active = z > 0
        l0 += float(active.sum())
        fired += active.sum(0).cpu()
        cos += float(torch.nn.functional.cosine_similarity(x, x_hat, dim=-1).sum())
    nmse = sq_err / sq_var
    return {
        "n_rows": n,
        "nmse": nmse,
        "fve": 1.0 - nmse,
        "mse_per_row": sq_err / n,
        "cosine": cos / n,
        "l0": l0 / n,
        "dead_fraction": float((fired == 0).float().mean()),
        "dense_fraction": float((fired > 0.1 * n).float().mean()),
        "feature_density": (fired.float() / n).tolist(),
    }


@contextmanager
def splice_layer_output(
    model: torch.nn.Module, layer: int, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[None]:
    """Replace decoder layer `layer`'s output at positions >= 1 by fn(output) during forwards."""
    from probewatch.capture import find_decoder_layers

    def hook(module: torch.nn.Module, args: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        new = hidden.clone()
        new[:, 1:] = fn(hidden[:, 1:]).to(hidden.dtype)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = find_decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def _mean_ce(model: torch.nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    total, count = 0.0, 0
    for ids, attn in batches:
        logits = model(input_ids=ids, attention_mask=attn, use_cache=False).logits.float()
        # predictions made at positions >= 1 (position 0's residual is never spliced)
        pred = logits[:, 1:-1]
        target = ids[:, 2:]
        mask = attn[:, 2:].bool()
        ce = torch.nn.functional.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1), reduction="none")
        total += float(ce[mask.reshape(-1)].sum())
        count += int(mask.sum())
    return total / max(count, 1), count


def ce_metrics(
    model: torch.nn.Module,
    sae: SAE,
    layer: int,
    sequences: Sequence[Sequence[int]],
    batch_size: int = 8,
    max_len: int = 256,
    max_norm: float | None = None,
) -> dict[str, float]:
    """CE clean / with the SAE spliced in / with the layer zero-ablated, on token sequences."""
    device = next(model.parameters()).device
    batches = []
    seqs = sorted((list(s)[:max_len] for s in sequences if len(s) >= 3), key=len)
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start : start + batch_size]
        width = max(map(len, chunk))
        ids = torch.zeros((len(chunk), width), dtype=torch.long)
        attn = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)] = torch.tensor(s)
            attn[i, : len(s)] = 1
        batches.append((ids.to(device), attn.to(device)))

    def keep_massive(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        if max_norm is None:
            return fn
        return lambda h: torch.where(h.float().norm(dim=-1, keepdim=True) > max_norm, h.float(), fn(h.float()))

    clean, n_tokens = _mean_ce(model, batches)
    with splice_layer_output(model, layer, keep_massive(lambda h: sae(h.float()))):
        spliced, _ = _mean_ce(model, batches)
    with splice_layer_output(model, layer, keep_massive(torch.zeros_like)):
        zero, _ = _mean_ce(model, batches)
    return {
        "n_tokens": n_tokens,
        "ce_clean": clean,
        "ce_spliced": spliced,
        "ce_zero_ablation": zero,
        "ce_increase": spliced - clean,
        "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
    }
