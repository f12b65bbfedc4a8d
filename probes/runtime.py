"""Scoring runtime: many bundles, grouped by layer, one GEMM per layer per block of rows.

    runtime = ProbeRuntime(load_bundles(paths, expected_fingerprint=fp), d_model=576)
    scores = runtime.score(layer=9, rows)            # [n_tokens, k] in runtime.stacks[9].probe_ids order
    per_probe = runtime.score_layers({9: rows})      # {probe_id: [n_tokens]}

For projection pushdown a client multiplies by `stack.weight` ([d, k]) on the model's device
and ships k floats per token; `score_projections` adds the bias on this side.

SAE features (kind `sae_feature`) are grouped per SAE (`sae_groups`): each block of a layer's
rows is encoded once per SAE for all feature probes on it and for the metrics watch-list:

    out = runtime.score_all({9: rows})               # out.scores {probe_id: [n]}, out.features {sae: FeatureActivations}
    runtime.set_watch("sae-name", [12, 345])         # latents exported as probewatch_sae_feature_activation

SAE layers need raw rows (`sae_layers`); pushdown projections only serve the linear stacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from probewatch.probes.bundle import LINEAR_KINDS, Bundle
from probewatch.probes.errors import BundleError, DimensionMismatchError, UnknownProbeError
from probewatch.probes.saes.loading import load_feature_descriptions
from probewatch.probes.saes.sae import SAE
from probewatch.probes.saes.scoring import FeatureActivations, SAEGroup


@dataclass
class LayerStack:
    """Every linear-family probe reading one layer, stacked: score = rows @ weight + bias."""

    layer: int
    probe_ids: list[str]
    weight: torch.Tensor  # [d, k] float32
    bias: torch.Tensor  # [k] float32

    @property
    def k(self) -> int:
        return len(self.probe_ids)


@dataclass
class ScoreOutput:
    """`score_all` result: per-probe token scores and, per SAE, the watched latents."""

    scores: dict[str, torch.Tensor]
    features: dict[str, FeatureActivations]


@dataclass
class ProbeRuntime:
    """Scores residual rows with every loaded bundle.

    `watch` ({SAE name: latent ids}) selects SAE latents whose activations `score_all` returns
    for metrics; `saes` adds SAEs that no loaded probe reads (watched only).
    """

    bundles: Sequence[Bundle]
    d_model: int | None = None
    device: str | torch.device = "cpu"
    watch: Mapping[str, Sequence[int]] | None = None
    saes: Sequence[SAE] = ()
    stacks: dict[int, LayerStack] = field(init=False)
    by_id: dict[str, Bundle] = field(init=False)
    sae_groups: dict[str, SAEGroup] = field(init=False)

    def __post_init__(self) -> None:
        self.by_id = {}
        for bundle in self.bundles:
            if bundle.id in self.by_id:
                raise BundleError(
                    f"two bundles share the probe id {bundle.id!r}: {self.by_id[bundle.id].path} and {bundle.path}"
                )
            d = bundle.manifest.model.d_model
            if self.d_model is None:
                self.d_model = d
            elif d != self.d_model:
                raise DimensionMismatchError(
                    f"bundle {bundle.id!r} reads d_model={d} but the runtime scores d_model={self.d_model}"
                )
            self.by_id[bundle.id] = bundle
        self.stacks = self._build_stacks()
        self.sae_groups = self._build_sae_groups()

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

    def _build_sae_groups(self) -> dict[str, SAEGroup]:
        groups: dict[str, SAEGroup] = {}
        by_sae: dict[int, SAEGroup] = {}

        def group_for(sae: SAE) -> SAEGroup:
            if id(sae) in by_sae:
                return by_sae[id(sae)]
            if self.d_model is not None and sae.cfg.d_in != self.d_model:
                raise DimensionMismatchError(
                    f"SAE {_sae_name(sae)!r} reads d_in={sae.cfg.d_in} but the runtime scores d_model={self.d_model}"
                )
            name = _sae_name(sae)
            if name in groups:
                raise BundleError(f"two different SAEs are named {name!r}; rename one of the SAE folders")
            source = sae.source_path
            group = SAEGroup(name=name, sae=sae, descriptions=load_feature_descriptions(source) if source else {})
            groups[name] = by_sae[id(sae)] = group
            return group

        for bundle in self.bundles:
            if bundle.manifest.kind == "sae_feature":
                if bundle.sae is None:
                    raise BundleError(
                        f"sae_feature bundle {bundle.id!r} was built without its SAE; load it with load_bundle"
                    )
                group_for(bundle.sae).add_probe(bundle.id, bundle.feature_form())
        for sae in self.saes:
            group_for(sae)
        for name, ids in (self.watch or {}).items():
            if name not in groups:
                raise BundleError(
                    f"watch-list names SAE {name!r}, but the loaded SAEs are: {', '.join(groups) or '(none)'}"
                )
            groups[name].set_watch(ids)
        return {name: g.finalize(self.device) for name, g in groups.items()}

    def set_watch(self, sae_name: str, feature_ids: Sequence[int]) -> None:
        """Replace the watch-list of one SAE (latent ids whose activations `score_all` returns)."""
        if sae_name not in self.sae_groups:
            raise BundleError(f"no SAE named {sae_name!r}; loaded SAEs: {', '.join(self.sae_groups) or '(none)'}")
        group = self.sae_groups[sae_name]
        group.set_watch(feature_ids)
        group.finalize(self.device)

    # -- introspection -----------------------------------------------------------------------------
    @property
    def probe_ids(self) -> list[str]:
        return list(self.by_id)

    @property
    def layers(self) -> list[int]:
        """Layers a client must capture to feed every loaded probe and watched SAE."""
        return sorted({b.layer for b in self.bundles} | set(self.sae_layers))

    @property
    def sae_layers(self) -> list[int]:
        """Layers whose raw rows an SAE must see (pushdown projections cannot feed these)."""
        return sorted({g.layer for g in self.sae_groups.values()})

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
        """{layer: [n, d]} -> {probe_id: [n]} for every probe (linear and sae_feature) on the given layers."""
        if not self.sae_groups:  # the linear-only path stays exactly one addmm per layer
            return self._score_linear(rows_by_layer)
        return self.score_all(rows_by_layer).scores

    def _score_linear(self, rows_by_layer: Mapping[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for layer, rows in rows_by_layer.items():
            if layer not in self.stacks:
                continue
            scores = self.score(layer, rows)
            for j, probe_id in enumerate(self.stacks[layer].probe_ids):
                out[probe_id] = scores[:, j]
        return out

    def score_all(self, rows_by_layer: Mapping[int, torch.Tensor]) -> ScoreOutput:
        """Linear and SAE-feature scores plus watched SAE latents, each SAE encoding each block once."""
        scores = self._score_linear(rows_by_layer)
        features: dict[str, FeatureActivations] = {}
        for name, group in self.sae_groups.items():
            rows = rows_by_layer.get(group.layer)
            if rows is None:
                continue
            self._check_rows(group.layer, rows)
            probe_scores, watched = group.run(rows)
            for j, probe_id in enumerate(group.probe_ids):
                scores[probe_id] = probe_scores[:, j]
            if watched is not None:
                features[name] = watched
        return ScoreOutput(scores, features)

    def _check_rows(self, layer: int, rows: torch.Tensor) -> None:
        if rows.dim() != 2 or rows.shape[1] != self.d_model:
            raise DimensionMismatchError(
                f"rows for layer {layer} have shape {tuple(rows.shape)}; expected [n, {self.d_model}]"
            )


def _sae_name(sae: SAE) -> str:
    if sae.name:
        return sae.name
    source = sae.source_path
    return source.name if source is not None else f"sae-layer{sae.cfg.layer}-{sae.cfg.architecture()}-{sae.cfg.d_sae}"
