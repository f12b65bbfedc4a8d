"""Scoring runtime: many bundles, grouped by layer, one GEMM per layer per block of rows.

    runtime = ProbeRuntime(load_bundles(paths, expected_fingerprint=fp), d_model=576)
    scores = runtime.score(layer=9, rows)            # [n_tokens, k] in runtime.stacks[9].probe_ids order
    per_probe = runtime.score_layers({9: rows})      # {probe_id: [n_tokens]}

For projection pushdown a client multiplies by `stack.weight` ([d, k]) on the model's device
and ships k floats per token; `score_projections` adds the bias on this side.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from probewatch.probes.bundle import LINEAR_KINDS, Bundle
from probewatch.probes.errors import BundleError, DimensionMismatchError, UnknownProbeError


@dataclass
class LayerStack:
    """Every linear-family probe reading one layer, stacked: score = rows @ weight + bias."""

    layer: int
    probe_ids: list[str]
    weight: torch.Tensor  # [d, k] float32
    bias: torch.Tensor    # [k] float32

    @property
    def k(self) -> int:
        return len(self.probe_ids)


@dataclass
class ProbeRuntime:
    bundles: Sequence[Bundle]
    d_model: int | None = None
    device: str | torch.device = "cpu"
    stacks: dict[int, LayerStack] = field(init=False)
    by_id: dict[str, Bundle] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {}
        for bundle in self.bundles:
            if bundle.id in self.by_id:
                raise BundleError(f"two bundles share the probe id {bundle.id!r}: {self.by_id[bundle.id].path} and {bundle.path}")
            d = bundle.manifest.model.d_model
            if self.d_model is None:
                self.d_model = d
            elif d != self.d_model:
                raise DimensionMismatchError(
                    f"bundle {bundle.id!r} reads d_model={d} but the runtime scores d_model={self.d_model}"
                )
            self.by_id[bundle.id] = bundle
        self.stacks = self._build_stacks()

    def _build_stacks(self) -> dict[int, LayerStack]:
        grouped: dict[int, list[Bundle]] = {}
        for bundle in self.bundles:
            if bundle.manifest.kind in LINEAR_KINDS:
                grouped.setdefault(bundle.layer, []).append(bundle)
        stacks: dict[int, LayerStack] = {}
        for layer, members in sorted(grouped.items()):
            forms = [b.linear_form() for b in members]
            weight = torch.stack([w for w, _ in forms], dim=1).to(self.device)
            bias = torch.tensor([b for _, b in forms], dtype=torch.float32, device=self.device)
            stacks[layer] = LayerStack(layer=layer, probe_ids=[b.id for b in members], weight=weight, bias=bias)
        return stacks

    # -- introspection -----------------------------------------------------------------------------
    @property
    def probe_ids(self) -> list[str]:
        return list(self.by_id)

    @property
    def layers(self) -> list[int]:
        """Layers a client must capture to feed every loaded probe."""
        return sorted({b.layer for b in self.bundles})

    def bundle(self, probe_id: str) -> Bundle:
        try:
            return self.by_id[probe_id]
        except KeyError:
            raise UnknownProbeError(
                f"unknown probe {probe_id!r}; loaded probes: {', '.join(self.probe_ids) or '(none)'}"
            ) from None

    # -- scoring -----------------------------------------------------------------------------------
    def _stack(self, layer: int) -> LayerStack:
        try:
            return self.stacks[layer]
        except KeyError:
            raise BundleError(f"no linear probe reads layer {layer}; probe layers: {sorted(self.stacks)}") from None

    def score(self, layer: int, rows: torch.Tensor) -> torch.Tensor:
        """[n, d] residual rows of `layer` -> [n, k] scores (one GEMM)."""
        stack = self._stack(layer)
        if rows.dim() != 2 or rows.shape[1] != self.d_model:
            raise DimensionMismatchError(
                f"rows for layer {layer} have shape {tuple(rows.shape)}; expected [n, {self.d_model}]"
            )
        rows = rows.to(device=stack.weight.device, dtype=torch.float32)
        return torch.addmm(stack.bias, rows, stack.weight)

    def score_projections(self, layer: int, projections: torch.Tensor) -> torch.Tensor:
        """[n, k] pushdown projections (rows @ stack.weight, computed client-side) -> [n, k] scores."""
        stack = self._stack(layer)
        if projections.dim() != 2 or projections.shape[1] != stack.k:
            raise DimensionMismatchError(
                f"projections for layer {layer} have shape {tuple(projections.shape)}; expected [n, {stack.k}]"
            )
        return projections.to(device=stack.bias.device, dtype=torch.float32) + stack.bias

    def score_layers(self, rows_by_layer: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{layer: [n, d]} -> {probe_id: [n]} for every linear probe on the given layers."""
        out: dict[str, torch.Tensor] = {}
        for layer, rows in rows_by_layer.items():
            if layer not in self.stacks:
                continue
            scores = self.score(layer, rows)
            for j, probe_id in enumerate(self.stacks[layer].probe_ids):
                out[probe_id] = scores[:, j]
        return out
