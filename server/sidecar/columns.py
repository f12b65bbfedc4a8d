"""A scored block's columns: which belong to which probe, and scoring one layer's block into them.

Most probes give one number per token (their score). An attention probe gives two, a_t (its
attention logit) then v_t (its value, probes/attention.py): its aggregator pools both, while v_t
alone is the token score clients see in score updates, incidents keep and metrics observe. Rows
and pushdown projections come out in the same layout (a pushdown client ships a stack's columns,
both of an attention probe's), so the engine applies either the same way.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probewatch.probes.runtime import ProbeRuntime
from probewatch.server.sidecar.metrics import SidecarMetrics

__all__ = ["PROJECTIONS", "ROWS", "Columns", "score_block"]

ROWS, PROJECTIONS = "rows", "projections"


@dataclass(frozen=True)
class Columns:
    """Probe ids in column order and each one's width (1, or 2 = (a_t, v_t) for an attention probe)."""

    probe_ids: list[str]
    widths: tuple[int, ...]

    def slices(self) -> Iterator[tuple[str, slice]]:
        """(probe id, its columns); `scores[mask, cols][:, -1]` is the probe's token score."""
        col = 0
        for pid, width in zip(self.probe_ids, self.widths):
            yield pid, slice(col, col + width)
            col += width

    def token_scores(self, scores: np.ndarray) -> np.ndarray:
        """[n, columns] -> [n, probes]: each probe's token score (v_t for an attention probe)."""
        if all(w == 1 for w in self.widths):
            return scores
        last = np.cumsum(self.widths) - 1
        return scores[:, last]


def score_block(
    runtime: ProbeRuntime, metrics: SidecarMetrics, layer: int, kind: str, blocks: Sequence[np.ndarray]
) -> tuple[Columns, np.ndarray]:
    """Concatenate blocks of one layer and score them: (their columns, float32 [n, columns])."""
    data = blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only wire buffers: we never write to them
        tensor = torch.from_numpy(data)
    with torch.inference_mode():
        if kind == PROJECTIONS:
            scores = runtime.score_projections(layer, tensor)
            stack = runtime.stacks[layer]
            return Columns(list(stack.probe_ids), tuple(stack.column_widths)), scores.cpu().numpy()
        if runtime.sae_groups:
            # linear + SAE-feature probes, each SAE encoding the block once; watched latents -> metrics
            out = runtime.score_all({layer: tensor}, partial=True)  # a multi-layer probe: its partial (joins.py)
            by_probe = out.scores
            for fa in out.features.values():
                values = fa.values.cpu().numpy()
                for j, (fid, desc) in enumerate(zip(fa.feature_ids, fa.descriptions)):
                    metrics.sae_feature_activation.observe_many((fa.sae, str(fid), desc), values[:, j])
        else:
            by_probe = runtime.score_layers({layer: tensor}, partial=True)
        probe_ids = list(by_probe)
        if not probe_ids:
            return Columns([], ()), np.zeros((data.shape[0], 0), dtype=np.float32)
        parts = [t if t.dim() == 2 else t.unsqueeze(1) for t in (by_probe[p] for p in probe_ids)]
        widths = tuple(int(p.shape[1]) for p in parts)
        return Columns(probe_ids, widths), torch.cat(parts, dim=1).cpu().numpy()
