"""Runtime side of SAE features: one encode per SAE per block of rows, shared by every consumer.

`SAEGroup` holds every `sae_feature` probe that reads one SAE, stacked like a `LayerStack`
(`weight [m, k]` over the union of the latents they read), plus the latents on the metrics
watch-list. `ProbeRuntime` builds the groups and calls `SAEGroup.run` once per layer per block.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from probewatch.probes.saes.errors import SAEError
from probewatch.probes.saes.sae import SAE


@dataclass
class FeatureActivations:
    """Watched latents of one SAE for one block of rows (what the sidecar exports as metrics).

    `values[i, j]` is latent `feature_ids[j]` at row i; `descriptions[j]` comes from the SAE's
    features.json ("" when it has none).
    """

    sae: str
    layer: int
    feature_ids: list[int]
    descriptions: list[str]
    values: torch.Tensor  # [n, m] float32


@dataclass
class SAEGroup:
    """Every feature probe (and watched latent) of one SAE: encode once, score with one addmm."""

    name: str
    sae: SAE
    probe_ids: list[str] = field(default_factory=list)
    forms: list[tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list, repr=False)
    watch: list[int] = field(default_factory=list)
    descriptions: dict[int, str] = field(default_factory=dict, repr=False)
    # built by `finalize`
    feature_ids: torch.Tensor = field(init=False, repr=False)  # [m] sorted union of read latents
    weight: torch.Tensor = field(init=False, repr=False)  # [m, k]
    bias: torch.Tensor = field(init=False, repr=False)  # [k]
    watch_cols: torch.Tensor = field(init=False, repr=False)  # [w] columns of `watch` in feature_ids

    @property
    def layer(self) -> int:
        return self.sae.cfg.layer

    @property
    def k(self) -> int:
        return len(self.probe_ids)

    def add_probe(self, probe_id: str, form: tuple[torch.Tensor, torch.Tensor, float]) -> None:
        self.probe_ids.append(probe_id)
        self.forms.append(form)

    def set_watch(self, feature_ids: Sequence[int]) -> None:
        ids = [int(i) for i in feature_ids]
        bad = [i for i in ids if not 0 <= i < self.sae.cfg.d_sae]
        if bad:
            raise SAEError(f"watch-list for SAE {self.name!r}: latent(s) {bad} outside [0, {self.sae.cfg.d_sae})")
        self.watch = list(dict.fromkeys(ids))

    def finalize(self, device: str | torch.device = "cpu") -> SAEGroup:
        self.sae = self.sae.to(device)
        union = sorted({int(i) for ids, _, _ in self.forms for i in ids.tolist()} | set(self.watch))
        col = {fid: j for j, fid in enumerate(union)}
        weight = torch.zeros(len(union), len(self.forms), dtype=torch.float32)
        for p, (ids, w, _) in enumerate(self.forms):
            for fid, value in zip(ids.tolist(), w.tolist()):
                weight[col[fid], p] = value
        self.feature_ids = torch.tensor(union, dtype=torch.long, device=device)
        self.weight = weight.to(device)
        self.bias = torch.tensor([b for _, _, b in self.forms], dtype=torch.float32, device=device)
        self.watch_cols = torch.tensor([col[f] for f in self.watch], dtype=torch.long, device=device)
        return self

    @torch.no_grad()
    def run(self, rows: torch.Tensor) -> tuple[torch.Tensor, FeatureActivations | None]:
        """[n, d] rows -> ([n, k] probe scores, watched activations or None)."""
        if self.feature_ids.numel() == 0:
            return rows.new_zeros((rows.shape[0], 0), dtype=torch.float32), None
        acts = self.sae.encode_features(rows, self.feature_ids).to(torch.float32)
        scores = torch.addmm(self.bias, acts, self.weight) if self.k else acts.new_zeros((acts.shape[0], 0))
        watched = None
        if self.watch:
            watched = FeatureActivations(
                self.name,
                self.layer,
                list(self.watch),
                [self.descriptions.get(f, "") for f in self.watch],
                acts.index_select(1, self.watch_cols),
            )
        return scores, watched
