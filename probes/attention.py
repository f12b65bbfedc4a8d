"""The learned attention-pooling probe (kind `attention`): a query and a value direction per probe.

Per token t: a_t = q·h_t + b_q (attention logit), v_t = w·h_t + b_w (token value, the probe's
per-token score). The generation score is sum_t softmax(a)_t v_t. Why: a mean over a long
transcript dilutes the few tokens that carry the behaviour, and `max`-type aggregations grow with
length; a learned query puts the weight on the tokens that matter, and the result stays a
weighted mean of v (bounded by min/max v whatever the length). Both directions are linear in h,
so the probe joins its layer's stack as two columns (a_t then v_t): one GEMM offline and live, and
a pushdown client ships two floats per token for it. The aggregate streams exactly like `softmax`
(probes/aggregate.py `AttentionAggregator`). Platt calibration folds into the value direction
(sum_t p_t (s v_t + o) = s sum_t p_t v_t + o because the weights sum to one).

Weights file: `query [d]`, `weight [d]`, optional `query_bias [1]`, `bias [1]`; with
`normalization: standardize` also `mean [d]`, `scale [d]`, applied to both directions.
"""

from __future__ import annotations

import torch

from probewatch.probes.errors import CorruptBundleError, DimensionMismatchError
from probewatch.probes.manifest import Manifest

__all__ = ["ATTENTION_COLUMNS", "attention_form", "check_attention_tensors"]

#: the columns an attention probe adds to its layer's stack, in order
ATTENTION_COLUMNS = ("attention_logit", "value")


def check_attention_tensors(manifest: Manifest, tensors: dict[str, torch.Tensor], where: str) -> None:
    """Raise CorruptBundleError / DimensionMismatchError naming the tensor that is missing or wrong."""
    d = manifest.model.d_model
    required = ["query", "weight"] + (["mean", "scale"] if manifest.normalization == "standardize" else [])
    for name in required:
        if name not in tensors:
            raise CorruptBundleError(
                f"{where}: weights lack tensor {name!r} (kind attention stores 'query' [d] and 'weight' [d]"
                + (", and 'mean'/'scale' with normalization standardize)" if name in ("mean", "scale") else ")")
            )
        if tensors[name].numel() != d:
            raise DimensionMismatchError(
                f"{where}: tensor {name!r} has {tensors[name].numel()} values but the manifest says d_model={d}"
            )
    for name in ("query_bias", "bias"):
        if name in tensors and tensors[name].numel() != 1:
            raise DimensionMismatchError(f"{where}: tensor {name!r} must hold one value, has {tensors[name].numel()}")
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise CorruptBundleError(f"{where}: tensor {name!r} contains NaN or Inf")
    if manifest.normalization == "standardize" and (tensors["scale"] <= 0).any():
        raise CorruptBundleError(f"{where}: tensor 'scale' must be strictly positive")


def attention_form(manifest: Manifest, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(W [d, 2], b [2]) float32 with normalisation folded in: [a_t, v_t] = h_t @ W + b."""
    cols, biases = [], []
    for direction, bias_name in (("query", "query_bias"), ("weight", "bias")):
        w = tensors[direction].to(torch.float64).reshape(-1)
        b = float(tensors[bias_name].reshape(-1)[0]) if bias_name in tensors else 0.0
        if manifest.normalization == "standardize":
            mean = tensors["mean"].to(torch.float64).reshape(-1)
            scale = tensors["scale"].to(torch.float64).reshape(-1)
            w = w / scale
            b = b - float((w * mean).sum())
        cols.append(w)
        biases.append(b)
    return torch.stack(cols, dim=1).to(torch.float32), torch.tensor(biases, dtype=torch.float32)
