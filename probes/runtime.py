"""Scoring runtime: many bundles, grouped by layer, one GEMM per layer per block of rows.

    runtime = ProbeRuntime(load_bundles(paths, expected_fingerprint=fp), d_model=576)
    scores = runtime.score(layer=9, rows)            # [n_tokens, k] in runtime.stacks[9].probe_ids order
    per_probe = runtime.score_layers({9: rows})      # {probe_id: [n_tokens]} ([n_tokens, 2] for attention)

For projection pushdown a client multiplies by `stack.weight` ([d, k]) on the model's device
and ships k floats per token; `score_projections` adds the bias on this side.

A stack's columns are its probes' columns in `probe_ids` order (`widths`): one per linear-family
probe (the token score), two per attention probe (a_t then v_t, probes/attention.py). `score`
returns every column; `score_layers` gives a linear probe [n] and an attention probe [n, 2].

SAE features (kind `sae_feature`) are grouped per SAE (`sae_groups`): each block of a layer's
rows is encoded once per SAE for all feature probes on it and for the metrics watch-list:

    out = runtime.score_all({9: rows})               # out.scores {probe_id: [n]}, out.features {sae: FeatureActivations}
    runtime.set_watch("sae-name", [12, 345])         # latents exported as probewatch_sae_feature_activation

SAE layers need raw rows (`sae_layers`); pushdown projections only serve the linear stacks.

A multi-layer linear probe (manifest `layers`) has one column in each of its layers' stacks: w_l,
with its bias on the first layer only (`Bundle.layer_forms`). `score_layers` sums those partial
columns in layer order when it is given every layer the probe reads (and leaves the probe out
otherwise); `partial=True` returns each layer's partial column as it is, which the live sidecar
joins per token as the layers arrive (server/sidecar/joins.py). `multi_layer` names such probes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch

from probewatch.probes.bundle import STACK_KINDS, Bundle
from probewatch.probes.errors import BundleError, DimensionMismatchError, UnknownProbeError
from probewatch.probes.saes.loading import load_feature_descriptions
from probewatch.probes.saes.sae import SAE
from probewatch.probes.saes.scoring import FeatureActivations, SAEGroup


@dataclass
class LayerStack:
    """Every linear-family and attention probe reading one layer, stacked: columns = rows @ weight + bias."""

    layer: int
    probe_ids: list[str]
    weight: torch.Tensor  # [d, k] float32
    bias: torch.Tensor  # [k] float32
    widths: list[int] | None = None  # columns per probe in probe_ids order (2: attention); None: one each

    @property
    def k(self) -> int:
        """Columns: what `score` returns and a pushdown client sends per token."""
        return int(self.weight.shape[1])

    @property
    def column_widths(self) -> list[int]:
        return list(self.widths) if self.widths is not None else [1] * len(self.probe_ids)

    def split(self, scores: torch.Tensor) -> dict[str, torch.Tensor]:
        """[n, k] columns -> {probe_id: [n] (one column) or [n, width]}."""
        out: dict[str, torch.Tensor] = {}
        col = 0
        for probe_id, width in zip(self.probe_ids, self.column_widths):
            out[probe_id] = scores[:, col] if width == 1 else scores[:, col : col + width]
            col += width
        return out


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
        grouped: dict[int, list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]] = {}
        for bundle in self.bundles:
            if bundle.manifest.kind in STACK_KINDS:
                for layer, form in bundle.layer_forms().items():
                    grouped.setdefault(layer, []).append((bundle.id, form))
        stacks: dict[int, LayerStack] = {}
        for layer, members in sorted(grouped.items()):
            forms = [form for _, form in members]
            weight = torch.cat([w for w, _ in forms], dim=1).to(self.device)
            bias = torch.cat([b for _, b in forms]).to(self.device)
            widths = [int(w.shape[1]) for w, _ in forms]
            stacks[layer] = LayerStack(
                layer=layer,
                probe_ids=[pid for pid, _ in members],
                weight=weight,
                bias=bias,
                widths=None if all(x == 1 for x in widths) else widths,
            )
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
        """Layers a client must capture to feed every loaded probe (each layer of a multi-layer one) and watched SAE."""
        return sorted({layer for b in self.bundles for layer in b.layers} | set(self.sae_layers))

    @property
    def multi_layer(self) -> dict[str, list[int]]:
        """{probe id: its layers} for the probes that read several layers (their token scores are joined sums)."""
        return {b.id: b.layers for b in self.bundles if len(b.layers) > 1}

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

    def score_layers(self, rows_by_layer: Mapping[int, torch.Tensor], partial: bool = False) -> dict[str, torch.Tensor]:
        """{layer: [n, d]} -> {probe_id: [n]} for every probe on the given layers ([n, 2] = (a, v) for attention).

        A multi-layer probe is summed over its layers when all of them are given, left out otherwise;
        `partial`: its column on the (one) given layer instead (what the sidecar joins per token)."""
        if not self.sae_groups:  # the linear-only path stays exactly one addmm per layer
            return self._score_linear(rows_by_layer, partial)
        return self.score_all(rows_by_layer, partial).scores

    def _score_linear(
        self, rows_by_layer: Mapping[int, torch.Tensor], partial: bool = False
    ) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        parts: dict[str, dict[int, torch.Tensor]] = {}
        multi = self.multi_layer
        for layer, rows in rows_by_layer.items():
            if layer not in self.stacks:
                continue
            for pid, scores in self.stacks[layer].split(self.score(layer, rows)).items():
                if pid in multi and not partial:
                    parts.setdefault(pid, {})[layer] = scores
                else:
                    out[pid] = scores
        for pid, by_layer in parts.items():
            if len(by_layer) == len(multi[pid]):
                out[pid] = join_partials([by_layer[layer] for layer in multi[pid]])
        return out

    def score_all(self, rows_by_layer: Mapping[int, torch.Tensor], partial: bool = False) -> ScoreOutput:
        """Linear and SAE-feature scores plus watched SAE latents, each SAE encoding each block once."""
        scores = self._score_linear(rows_by_layer, partial)
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


def join_partials(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """A multi-layer probe's token scores from its per-layer partial columns: summed in layer order, float32
    (the sidecar's join adds them in the same order, so live and offline agree to the bit)."""
    total = parts[0].to(torch.float32).clone()
    for part in parts[1:]:
        total += part.to(torch.float32)
    return total


def _sae_name(sae: SAE) -> str:
    if sae.name:
        return sae.name
    source = sae.source_path
    return source.name if source is not None else f"sae-layer{sae.cfg.layer}-{sae.cfg.architecture()}-{sae.cfg.d_sae}"
