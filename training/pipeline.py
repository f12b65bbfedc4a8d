"""`probewatch train`: data -> activations -> splits -> sweep -> fit -> bundle + report.

`train` runs six stage functions; each returns a typed result the next one reads (and each is
cached or cheap to redo):

1. `prepare_data` -> `PreparedData`: the behaviour's builder (or the user's JSONL files) and the
   production-like control set (both with the model's own responses, cached);
2. `extract` -> `Activations`: the sweep layers for pool (kind by kind), out-of-distribution
   sets and control (cached shards, one layer in memory at a time);
3. `make_splits` -> `Splits`: fit / calibration (validation) / test of the pool, by group, and the
   calibration / held-out halves of the control set, by kind;
4. `run_sweep` -> `SweepOutcome`: layer x method x (C) x token selection x aggregation, scored on
   validation, leave-one-kind-out and out-of-distribution sets; chosen by held-out kind when the
   pool has kinds; plus the multi-layer comparison;
5. `fit_final` -> `FittedProbe`: the chosen configuration fitted on the fit split, Platt-scaled on
   the calibration split (scores become calibrated logits), thresholded at the operating point
   (`calibration.operating_point`: at most `fpr` of the control set and at most
   `hard_negative_fpr` of the behaviour's own calibration negatives), and measured on the test
   split, the held-out control half (per kind), every held-out kind and the OOD sets;
6. `export` -> `TrainResult`: bundle + report.json + plots in `--out`; a parity check scores a
   few test dialogues through `probewatch.scoring.score_dialogues` (the live path) and compares
   with the cached scores.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.behaviours import DEFAULT_PROBE_IDS, DESCRIPTIONS
from probewatch.data.dialogue import Dialogue, load_dialogues
from probewatch.errors import ProbewatchError
from probewatch.probes import Aggregation, Threshold
from probewatch.probes.errors import FingerprintMismatchError
from probewatch.training.calibration import OperatingPoint, operating_point, platt_fit
from probewatch.training.datasets import BehaviourData, Source, build_behaviour_data
from probewatch.training.export import METHOD_BY_KIND, check_target, export_bundle
from probewatch.training.extract import ActivationSet, ActivationUnion, contiguous_by_kind, extract_activations
from probewatch.training.extract import extract_by_kind as _extract_by_kind
from probewatch.training.features import LayerData, score_all
from probewatch.training.metrics import detection_metrics
from probewatch.training.splits import check_disjoint, grouped_split
from probewatch.training.sweep import (
    PoolArrays,
    ProbeSpec,
    SweepRow,
    best_row,
    fit_probe,
    heldout_kind_recall,
    selection_basis,
    sweep_layer,
    with_temperature,
)

log = logging.getLogger("probewatch.training")

METHODS = ("logistic", "mean_diff", "lat")
DEFAULT_IDS = DEFAULT_PROBE_IDS
#: C values swept (and chosen by held-out kind) for logistic probes when the pool has kinds
HELDOUT_CS = (1e-4, 1e-3, 1e-2, 1e-1)
#: behaviours whose built-in data is read on the model's own text, where reading the prompt too
#: (`all`: prompt + response, mean) is compared with the response alone
RESPONSE_BEHAVIOURS = ("deception", "alignment_faking", "eval_awareness")
#: behaviours whose builders take the model's own answers (`respond`): the response behaviours, and
#: monitored framing for the multi-turn prompts of its plain-traffic negatives
RESPONDING_BEHAVIOURS = (*RESPONSE_BEHAVIOURS, "monitored_framing")


class TrainingError(ProbewatchError):
    """Training cannot proceed as configured (bad flags, unusable data)."""


@dataclass
class TrainConfig:
    behaviour: str | None = None
    model: str | None = None
    data_dir: str | Path | None = None
    data_files: Sequence[Path] = ()
    ood_files: Sequence[Path] = ()
    extra_files: Sequence[Path] = ()  # labelled additions to the pool (e.g. reviewed incidents), own kinds
    control_file: Path | None = None
    layers: Sequence[int] | None = None
    methods: Sequence[str] = METHODS
    aggregations: Sequence[str] | None = None
    token_selections: Sequence[str] | None = None
    per_token: bool | None = None  # None: per-example sweep, per-token tried on the best config
    standardize: bool | None = None  # None: logistic standardised, mean_diff/lat raw
    fpr: float = 0.01
    hard_negative_fpr: float | None = 0.2  # None: threshold from the control set alone
    heldout_Cs: Sequence[float] | None = HELDOUT_CS  # None: C by grouped CV on the fit split
    multi_layer: int = 3  # best layers compared as a concatenated / ensembled probe (0: skip)
    seed: int = 0
    probe_id: str | None = None
    version: str | None = None
    out: Path | None = None
    force: bool = False
    init_from: Path | None = None
    test_size: float = 0.2
    cal_size: float = 0.25
    balance_kinds: bool = True
    control_n: int = 400
    control_max_new_tokens: int = 64
    production_control: bool = True
    batch_size: int = 16
    max_tokens: int | None = 1024
    cache_dtype: str = "float32"
    window: int = 8
    alpha: float = 0.2
    plots: bool = True
    parity_check: int = 8
    progress: bool = True
    builder_options: dict[str, Any] = field(default_factory=dict)
    command: str | None = None


@dataclass
class TrainResult:
    bundle_path: Path
    report_path: Path
    report: dict[str, Any]


# -- stage results ------------------------------------------------------------------------------------
@dataclass
class PreparedData:
    """Stage 1: what is trained on and what the threshold is calibrated on."""

    data: BehaviourData
    control: list[Dialogue]
    control_source: Source
    token_selections: list[str]
    aggregations: list[str]


@dataclass
class Activations:
    """Stage 2: cached activations; `layer(L)` loads one layer of everything (one layer in memory)."""

    pool: ActivationSet | ActivationUnion
    ood: dict[str, ActivationSet]
    control: ActivationSet
    layers: list[int]
    _cache: dict[int, tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]] = field(
        default_factory=dict, repr=False
    )

    def layer(self, layer: int) -> tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]:
        """(pool, {ood name: (data, labels)}, control) rows of one layer."""
        if layer not in self._cache:
            self._cache.clear()
            self._cache[layer] = (
                LayerData.load(self.pool, layer),
                {name: (LayerData.load(a, layer), a.labels) for name, a in self.ood.items()},
                LayerData.load(self.control, layer),
            )
        return self._cache[layer]


@dataclass
class Splits:
    """Stage 3: grouped pool splits and the control halves (calibration / held-out), by kind."""

    pool: PoolArrays
    control_cal: np.ndarray
    control_held: np.ndarray
    control_kinds: np.ndarray

    @property
    def hard_negatives(self) -> np.ndarray:
        """Calibration-split negatives of the evaluable kinds: the second operating point's reference."""
        p = self.pool
        idx = p.val_idx[p.labels[p.val_idx] == 0]
        return idx[~np.isin(p.kinds[idx], list(p.train_only))]


@dataclass
class SweepOutcome:
    """Stage 4: every configuration scored, the chosen one, and the multi-layer comparison."""

    rows: list[SweepRow]
    chosen: SweepRow
    basis: str
    multi_layer: dict[str, Any] | None = None


@dataclass
class FittedProbe:
    """Stage 5: the final probe (Platt-folded), its operating point and every measurement."""

    probe: Any
    spec: ProbeSpec
    aggregation: Aggregation
    platt: tuple[float, float]
    scores: np.ndarray  # every pool example, calibrated logits
    control_scores: np.ndarray
    point: OperatingPoint
    metrics: dict[str, Any]
    test: dict[str, Any]
    ood: dict[str, dict[str, Any]]
    heldout: dict[str, dict[str, Any]]
    operating: dict[str, Any]


# -- helpers --------------------------------------------------------------------------------------------
def default_layers(n_layers: int) -> list[int]:
    """Every other layer from 1 (the sweep default; extraction stores only these)."""
    return list(range(1, n_layers, 2)) or [0]


def _default_out(model_id: str, probe_id: str) -> Path:
    from probewatch import envs

    return envs.user_bundles_dir() / model_id.replace("/", "--") / probe_id


def apply_init_from(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    """Take settings from an existing bundle being updated; refuse one made for another model."""
    from probewatch.probes import load_bundle

    assert config.init_from is not None  # train() calls this only with --init-from
    bundle = load_bundle(config.init_from)
    m = bundle.manifest
    if m.model.fingerprint != fingerprint:
        raise FingerprintMismatchError(
            f"--init-from {config.init_from}: bundle {m.id!r} was trained on model {m.model.id!r} ({m.model.fingerprint}), "
            f"but --model has fingerprint {fingerprint}; refusing to update a bundle with another model's activations "
            "(train a new bundle without --init-from instead)"
        )
    if config.behaviour and config.behaviour != m.behaviour:
        raise TrainingError(f"--behaviour {config.behaviour} contradicts --init-from bundle behaviour {m.behaviour}")
    config.behaviour = m.behaviour
    config.layers = config.layers or [m.layer]
    if tuple(config.methods) == METHODS:
        config.methods = [METHOD_BY_KIND.get(m.kind, "logistic")]
    config.aggregations = config.aggregations or [m.aggregation.method]
    config.token_selections = config.token_selections or [m.token_selection]
    config.window, config.alpha = m.aggregation.window, m.aggregation.alpha
    if config.standardize is None:
        config.standardize = m.normalization == "standardize"
    config.probe_id = config.probe_id or m.id
    config.version = config.version or (str(int(m.version) + 1) if str(m.version).isdigit() else f"{m.version}+1")
    return {
        "init_from": str(config.init_from),
        "previous_version": m.version,
        "previous_weights_sha256": m.weights_sha256,
    }


def _load_files(paths: Sequence[Path]) -> list[Dialogue]:
    out: list[Dialogue] = []
    for p in paths:
        out.extend(load_dialogues(p))
    return out


def _pool_data(config: TrainConfig, loaded: Any = None) -> BehaviourData:
    if config.data_files:
        pool = _load_files(config.data_files)
        ood = {Path(p).stem: load_dialogues(p) for p in config.ood_files}
        sources = [
            Source.of(Path(p).name, Path(p), len(load_dialogues(p))) for p in [*config.data_files, *config.ood_files]
        ]
        selection = "prompt_last" if all(not d.ends_with_assistant for d in pool) else "response"
        aggs = ("last",) if selection == "prompt_last" else ("mean", "max", "rolling_mean_max")
        return BehaviourData(_behaviour(config), pool, ood, sources, selection, aggs, notes={"custom_data": True})
    options = dict(config.builder_options)
    if config.behaviour in RESPONDING_BEHAVIOURS and loaded is not None and "respond" not in options:
        from probewatch.training.datasets.control import cached_responses

        def respond(prompts: list[str], max_new_tokens: int = 32) -> list[str]:
            return cached_responses(loaded, prompts, max_new_tokens, "responses", config.progress)

        options["respond"] = respond
    data = build_behaviour_data(_behaviour(config), config.data_dir, seed=config.seed, **options)
    for p in config.ood_files:
        data.ood[Path(p).stem] = load_dialogues(p)
    return data


def _check_labels(pool: Sequence[Dialogue], where: str) -> None:
    labels = Counter(d.label for d in pool)
    if None in labels:
        raise TrainingError(f"{where}: every training dialogue needs a label (0/1)")
    if labels.get(0, 0) < 2 or labels.get(1, 0) < 2:
        raise TrainingError(f"{where}: need at least 2 examples of each label, got {dict(labels)}")


def _aggregation_objs(names: Sequence[str], window: int, alpha: float) -> list[Aggregation]:
    return [Aggregation(method=n, window=window, alpha=alpha) for n in names]


def _kinds_summary(pool: Sequence[Dialogue]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for d in pool:
        entry = out.setdefault(d.kind or "?", {"n": 0, "positive": 0, "negative": 0, "groups": 0})
        entry["n"] += 1
        entry["positive" if d.label == 1 else "negative"] += 1
    for kind in out:
        out[kind]["groups"] = len({d.group for d in pool if (d.kind or "?") == kind})
    return out


def check_config(config: TrainConfig, n_layers: int, model_id: str) -> list[int]:
    """Refuse bad flags before any work; returns the sorted sweep layers."""
    _behaviour(config)
    for method in config.methods:
        if method not in METHODS:
            raise TrainingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    if config.hard_negative_fpr is not None and not 0.0 <= config.hard_negative_fpr < 1.0:
        raise TrainingError(f"--hard-negative-fpr must be in [0, 1), got {config.hard_negative_fpr}")
    layers = sorted({int(layer) for layer in (config.layers or default_layers(n_layers))})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise TrainingError(f"layers {bad} out of range for {model_id} ({n_layers} layers: 0..{n_layers - 1})")
    return layers


def _behaviour(config: TrainConfig) -> str:
    """config.behaviour; check_config refuses a config without one (--init-from fills it in first)."""
    if config.behaviour is None:
        raise TrainingError("--behaviour is required (" + ", ".join(DEFAULT_IDS) + ")")
    return config.behaviour


# -- 1. data --------------------------------------------------------------------------------------------
def prepare_data(config: TrainConfig, loaded: Any) -> PreparedData:
    data = _pool_data(config, loaded)
    if config.extra_files:
        from probewatch.data.reviewed import load_extra_data

        for path in map(Path, config.extra_files):
            extra = load_extra_data([path], behaviour=config.behaviour)
            data.pool = [*data.pool, *extra]
            data.sources = [*data.sources, Source.of(path.name, path, len(extra))]
    _check_labels(data.pool, "training data")
    if config.token_selections:
        selections = list(config.token_selections)
    else:
        selections = [data.token_selection]
        if data.token_selection == "response" and config.behaviour in RESPONSE_BEHAVIOURS and not config.data_files:
            selections.append("all")  # prompt + response vs response only
    if config.control_file:
        control = load_dialogues(config.control_file)
        control_source = Source.of(Path(config.control_file).name, Path(config.control_file), len(control))
    else:
        from probewatch.training.datasets.common import resolve_data_dir
        from probewatch.training.datasets.control import build_control

        control, control_source = build_control(
            loaded,
            resolve_data_dir(config.data_dir),
            n=config.control_n,
            max_new_tokens=config.control_max_new_tokens,
            seed=config.seed,
            progress=config.progress,
            production=config.production_control,
        )
    aggs = list(config.aggregations or data.aggregations)
    data.pool = contiguous_by_kind(data.pool)  # one cache per kind: new data re-extracts only its kind
    return PreparedData(data, list(control), control_source, selections, aggs)


# -- 2. activations ---------------------------------------------------------------------------------------
def extract(config: TrainConfig, loaded: Any, prepared: PreparedData, layers: Sequence[int]) -> Activations:
    def one(name: str, dialogues: Sequence[Dialogue]) -> ActivationSet:
        # the cache key is model + data + layers; the name only labels the folder (the control set is shared)
        return extract_activations(
            loaded.model,
            loaded.tokenizer,
            dialogues,
            layers,
            loaded.fingerprint,
            name=name,
            max_tokens=config.max_tokens,
            batch_size=config.batch_size,
            dtype=config.cache_dtype,
            progress=config.progress,
        )

    pool = _extract_by_kind(
        loaded.model,
        loaded.tokenizer,
        prepared.data.pool,
        layers,
        loaded.fingerprint,
        name=_behaviour(config),
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        dtype=config.cache_dtype,
        progress=config.progress,
    )
    ood = {name: one(f"{config.behaviour}-ood-{name}", ds) for name, ds in prepared.data.ood.items()}
    return Activations(pool, ood, one("control", prepared.control), list(layers))


# -- 3. splits ----------------------------------------------------------------------------------------------
def make_splits(config: TrainConfig, acts: Activations, data: BehaviourData) -> Splits:
    from probewatch.training.datasets.control import control_halves

    labels, groups, kinds = acts.pool.labels, acts.pool.groups, acts.pool.kinds
    train_only = tuple(data.train_only_kinds)
    auxiliary = np.isin(kinds, list(train_only))
    rest, test_idx = grouped_split(groups, labels, config.test_size, config.seed, idx=np.flatnonzero(~auxiliary))
    fit_idx, val_idx = grouped_split(groups, labels, config.cal_size, config.seed + 1, idx=rest)
    fit_idx = np.sort(np.concatenate([fit_idx, np.flatnonzero(auxiliary)]))
    check_disjoint(groups, rest, test_idx)
    check_disjoint(groups, fit_idx, val_idx)
    check_disjoint(groups, fit_idx, test_idx)
    control_kinds = acts.control.kinds
    cal, held = control_halves(control_kinds.tolist(), config.seed)
    return Splits(PoolArrays(labels, groups, kinds, fit_idx, val_idx, test_idx, train_only), cal, held, control_kinds)


# -- 4. sweep -------------------------------------------------------------------------------------------------
def run_sweep(
    config: TrainConfig, prepared: PreparedData, acts: Activations, splits: Splits, layers: Sequence[int]
) -> SweepOutcome:
    from tqdm.auto import tqdm

    pool = splits.pool
    basis = selection_basis(pool, bool(prepared.data.ood))
    Cs = list(config.heldout_Cs) if (config.heldout_Cs and basis == "heldout_kind") else None
    aggregations = _aggregation_objs(prepared.aggregations, config.window, config.alpha)
    rows: list[SweepRow] = []
    per_token_sweep = bool(config.per_token)
    features: dict[tuple[str, int], np.ndarray] = {}  # per-example matrices for the multi-layer comparison

    def sweep(layer: int, selection: str, methods: Sequence[str], per_token: bool, grid=Cs) -> list[SweepRow]:
        ld, ood, control_ld = acts.layer(layer)
        if config.multi_layer and selection != "prompt_last":
            features[(selection, layer)] = ld.example_matrix(selection)
        elif config.multi_layer:
            features[(selection, layer)] = ld.last
        return sweep_layer(
            ld,
            ood,
            pool,
            selection,
            methods,
            aggregations,
            per_token and selection == "response",
            config.seed,
            config.balance_kinds,
            config.standardize,
            control=control_ld.subset(splits.control_cal),
            fpr=config.fpr,
            Cs=grid,
        )

    bar = tqdm(
        total=len(prepared.token_selections) * len(layers),
        desc=f"sweep {config.behaviour}",
        unit="layer",
        disable=not config.progress,
    )
    for layer in layers:  # layer-major: each layer is loaded once for every token selection
        for selection in prepared.token_selections:
            rows += sweep(layer, selection, config.methods, per_token_sweep)
            bar.update(1)
    bar.close()
    chosen = best_row(rows, basis)
    if config.per_token is None and chosen.token_selection == "response":
        grid = [chosen.C] if (Cs and chosen.method == "logistic") else None
        extra = sweep(chosen.layer, "response", [chosen.method], True, grid)
        rows += extra
        chosen = best_row([chosen, *extra], basis)
    multi = None
    if config.multi_layer > 1 and basis == "heldout_kind" and len(layers) > 1:
        multi = _multi_layer(config, rows, chosen, features, pool)
    log.info(
        "chosen: layer %d, %s (C=%s), %s, per_token=%s, aggregation %s (%s %.3f, validation %.3f)",
        chosen.layer,
        chosen.method,
        chosen.C,
        chosen.token_selection,
        chosen.per_token,
        chosen.aggregation,
        basis,
        chosen.selection_score(basis),
        chosen.val_auroc or float("nan"),
    )
    return SweepOutcome(rows, chosen, basis, multi)


def _multi_layer(
    config: TrainConfig,
    rows: Sequence[SweepRow],
    chosen: SweepRow,
    features: dict[tuple[str, int], np.ndarray],
    pool: PoolArrays,
) -> dict[str, Any] | None:
    """Concatenated / ensembled logistic probes on the best layers (per-example, chosen token selection)."""
    from probewatch.training.multilayer import multi_layer_comparison

    selection = chosen.token_selection
    agg = "mean" if selection != "prompt_last" else "last"
    single = [
        r
        for r in rows
        if r.method == "logistic" and not r.per_token and r.token_selection == selection and r.aggregation == agg
    ]
    if not single:
        return None
    best_by_layer: dict[int, SweepRow] = {}
    for r in single:
        if r.layer not in best_by_layer or (r.heldout_kind_auroc or 0) > (
            best_by_layer[r.layer].heldout_kind_auroc or 0
        ):
            best_by_layer[r.layer] = r
    ranked = sorted(best_by_layer.values(), key=lambda r: -(r.heldout_kind_auroc or 0))[: config.multi_layer]
    layers = sorted(r.layer for r in ranked)
    if len(layers) < 2 or any((selection, layer) not in features for layer in layers):
        return None
    out = multi_layer_comparison(
        {layer: features[(selection, layer)] for layer in layers},
        pool,
        layers,
        ranked[0].C,
        config.seed,
        config.balance_kinds,
    )
    best = ranked[0]
    out["token_selection"] = selection
    out["best_single"] = {
        "layer": best.layer,
        "val_auroc": best.val_auroc,
        "heldout_kind_auroc": best.heldout_kind_auroc,
        "heldout_per_kind": best.heldout_per_kind,
    }
    return out


# -- 5. final fit, calibration, operating point -----------------------------------------------------------------
def fit_final(
    config: TrainConfig, acts: Activations, splits: Splits, sweep: SweepOutcome, data: BehaviourData
) -> FittedProbe:
    chosen, pool = sweep.chosen, splits.pool
    labels, fit_idx, val_idx, test_idx = pool.labels, pool.fit_idx, pool.val_idx, pool.test_idx
    spec = ProbeSpec(
        chosen.method,
        chosen.layer,
        chosen.token_selection,
        chosen.per_token,
        chosen.aggregation,
        config.standardize,
        C=chosen.C if (sweep.basis == "heldout_kind" and config.heldout_Cs and chosen.method == "logistic") else None,
    )
    ld, ood, control_ld = acts.layer(chosen.layer)
    probe = fit_probe(spec, ld, pool, fit_idx, config.seed, config.balance_kinds)
    w, b = probe.raw_linear_form()
    base = Aggregation(method=chosen.aggregation, window=config.window, alpha=config.alpha)
    (agg,) = with_temperature([base], w, b, ld, fit_idx, spec.token_selection)
    raw = score_all(w, b, ld, spec.token_selection, [agg])[agg.method]
    slope, offset = platt_fit(raw[val_idx], labels[val_idx])
    probe.affine_(slope, offset)
    agg = replace(agg, temperature=agg.temperature * slope)  # softmax weights are unchanged by the Platt map
    w, b = probe.raw_linear_form()

    def scored(data_: LayerData) -> np.ndarray:
        return score_all(w, b, data_, spec.token_selection, [agg])[agg.method]

    scores, control_scores = scored(ld), scored(control_ld)
    hard = splits.hard_negatives
    point = operating_point(
        control_scores[splits.control_cal],
        config.fpr,
        scores[hard] if config.hard_negative_fpr is not None else None,
        config.hard_negative_fpr,
    )
    threshold = point.value
    test = detection_metrics(scores[test_idx], labels[test_idx], control_scores[splits.control_cal], config.fpr)
    test["fpr_control_heldout"] = float((control_scores[splits.control_held] >= point.control_threshold).mean())
    test["recall_at_fpr_negatives"] = detection_metrics(scores[test_idx], labels[test_idx], None, config.fpr)[
        "recall_at_fpr"
    ]
    operating = operating_summary(scores, labels, pool, splits, control_scores, point)
    ood_metrics = {}
    for name, (od, od_labels) in ood.items():
        s = scored(od)
        ood_metrics[name] = detection_metrics(s, od_labels, control_scores[splits.control_cal], config.fpr)
        y = np.asarray(od_labels)
        ood_metrics[name]["at_shipped_threshold"] = {
            "recall": float((s[y == 1] >= threshold).mean()) if (y == 1).any() else None,
            "fpr_negatives": float((s[y == 0] >= threshold).mean()) if (y == 0).any() else None,
        }
    heldout = heldout_kind_recall(
        spec, ld, pool, control_ld.subset(splits.control_cal), config.fpr, config.seed, config.balance_kinds, base
    )
    heldout_aurocs = [v["auroc"] for v in heldout.values() if v["auroc"] is not None]
    test_kinds = pool.kinds[test_idx]
    per_kind_test = {}
    for kind in sorted(set(test_kinds.tolist())):
        sel = test_kinds == kind
        if len(set(labels[test_idx][sel].tolist())) == 2:
            per_kind_test[kind] = detection_metrics(scores[test_idx][sel], labels[test_idx][sel])["auroc"]
    metrics = {
        "auroc": test["auroc"],
        "auroc_test_per_kind": per_kind_test,
        "recall_at_fpr_control": test["recall_at_fpr"],
        "fpr": config.fpr,
        "fpr_control_heldout": test["fpr_control_heldout"],
        "auroc_heldout_kind": float(np.mean(heldout_aurocs)) if heldout_aurocs else None,
        "auroc_heldout_kind_per_kind": {k: v["auroc"] for k, v in heldout.items()},
        "auroc_ood": {k: v["auroc"] for k, v in ood_metrics.items()},
        "recall_at_fpr_control_ood": {k: v["recall_at_fpr"] for k, v in ood_metrics.items()},
        "operating_point": {k: v for k, v in operating.items() if k != "per_kind"},
        "n_test": len(test_idx),
        "split": "grouped by source item (group)",
    }
    return FittedProbe(
        probe,
        spec,
        agg,
        (slope, offset),
        scores,
        control_scores,
        point,
        metrics,
        test,
        ood_metrics,
        heldout,
        operating,
    )


def operating_summary(
    scores: np.ndarray,
    labels: np.ndarray,
    pool: PoolArrays,
    splits: Splits,
    control_scores: np.ndarray,
    point: OperatingPoint,
) -> dict[str, Any]:
    """Both operating points measured on held-out data: test split (recall, FPR on its negatives =
    honest answers in behaviour-laden contexts, per kind) and the held-out control half (per kind)."""
    test = pool.test_idx
    y = labels[test]
    s = scores[test]
    kinds = pool.kinds[test]

    def at(t: float) -> dict[str, Any]:
        held = splits.control_held
        return {
            "threshold": float(t),
            "recall": float((s[y == 1] >= t).mean()) if (y == 1).any() else None,
            "fpr_negatives": float((s[y == 0] >= t).mean()) if (y == 0).any() else None,
            "fpr_control_heldout": float((control_scores[held] >= t).mean()),
        }

    per_kind: dict[str, dict[str, Any]] = {}
    for kind in sorted(set(kinds.tolist())):
        sel = kinds == kind
        yk, sk = y[sel], s[sel]
        per_kind[kind] = {
            "recall": float((sk[yk == 1] >= point.value).mean()) if (yk == 1).any() else None,
            "fpr_negatives": float((sk[yk == 0] >= point.value).mean()) if (yk == 0).any() else None,
            "n": int(sel.sum()),
        }
    control_per_kind: dict[str, dict[str, Any]] = {}
    held_kinds = splits.control_kinds[splits.control_held]
    for kind in dict.fromkeys(held_kinds.tolist()):
        sel = splits.control_held[held_kinds == kind]
        control_per_kind[str(kind)] = {
            "fpr": float((control_scores[sel] >= point.value).mean()),
            "n": int(len(sel)),
        }
    return {
        "threshold": float(point.value),
        "set_by": point.set_by,
        "fpr_target": point.fpr,
        "hard_negative_fpr_target": point.hard_negative_fpr,
        "control_threshold": point.control_threshold,
        "hard_negative_threshold": point.hard_negative_threshold,
        "n_hard_negatives_calibration": int(len(splits.hard_negatives)),
        "shipped": at(point.value),
        "control_only": at(point.control_threshold),
        "per_kind": per_kind,
        "control_per_kind": control_per_kind,
    }


# -- 6. export + report ---------------------------------------------------------------------------------------------
def export(
    config: TrainConfig,
    loaded: Any,
    prepared: PreparedData,
    acts: Activations,
    splits: Splits,
    sweep: SweepOutcome,
    fitted: FittedProbe,
    out: Path,
    probe_id: str,
    timings: dict[str, float],
    provenance_extra: dict[str, Any],
) -> TrainResult:
    chosen, data, pool = sweep.chosen, prepared.data, splits.pool
    slope, offset = fitted.platt
    sizes = {
        "pool": len(pool.labels),
        "fit": len(pool.fit_idx),
        "calibration": len(pool.val_idx),
        "test": len(pool.test_idx),
        "control_calibration": len(splits.control_cal),
        "control_heldout": len(splits.control_held),
        "hard_negatives_calibration": len(splits.hard_negatives),
    }
    training = {
        "method": chosen.method,
        "layer": chosen.layer,
        "per_token": chosen.per_token,
        "C": getattr(fitted.probe, "C_", None),
        "C_selected_by": "held-out kind" if fitted.spec.C is not None else "grouped CV on the fit split",
        "standardize": bool(fitted.probe.standardize),
        "seed": config.seed,
        "token_selection": chosen.token_selection,
        "aggregation": chosen.aggregation,
        "balance_kinds": config.balance_kinds,
        "selected_by": sweep.basis,
        "n_configurations": len(sweep.rows),
        "layers_swept": acts.layers,
        "sizes": sizes,
        "kinds": _kinds_summary(data.pool),
        "train_only_kinds": list(data.train_only_kinds),
        "data": [asdict(s) for s in data.sources],
        "control": asdict(prepared.control_source),
        "activation_cache": acts.pool.index["key"][:16],
        "platt": {"slope": slope, "offset": offset, "fitted_on": "calibration split"},
        "command": config.command,
        **provenance_extra,
    }
    point = fitted.point
    threshold_obj = Threshold(
        value=float(point.value),
        method="fpr" if point.hard_negative_threshold is None else "fpr+hard_negatives",
        fpr=config.fpr,
        calibration_set=prepared.control_source.name,
        n_calibration=len(splits.control_cal),
    )
    export_bundle(
        out,
        fitted.probe,
        probe_id=probe_id,
        behaviour=_behaviour(config),
        method=chosen.method,
        model_id=loaded.model_id,
        fingerprint=loaded.fingerprint,
        d_model=loaded.d_model,
        n_layers=loaded.n_layers,
        layer=chosen.layer,
        token_selection=chosen.token_selection,
        aggregation=fitted.aggregation,
        threshold=threshold_obj,
        metrics=fitted.metrics,
        training=training,
        description=_description(_behaviour(config), chosen, sweep.basis, fitted.metrics),
        version=config.version or "1",
        extra={
            "direction_norm": float(np.linalg.norm(fitted.probe.raw_linear_form()[0])),
            "score_units": "calibrated logit (Platt)",
            "operating_point": {
                "control_threshold": point.control_threshold,
                "fpr": point.fpr,
                "hard_negative_threshold": point.hard_negative_threshold,
                "hard_negative_fpr": point.hard_negative_fpr,
                "set_by": point.set_by,
            },
        },
    )
    parity = (
        _parity_check(out, loaded, data.pool, pool.test_idx, fitted.scores, config) if config.parity_check else None
    )
    report: dict[str, Any] = {
        "probe_id": probe_id,
        "behaviour": config.behaviour,
        "bundle": str(out),
        "model": {
            "id": loaded.model_id,
            "fingerprint": loaded.fingerprint,
            "n_layers": loaded.n_layers,
            "d_model": loaded.d_model,
        },
        "command": config.command,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "data": {
            "kinds": _kinds_summary(data.pool),
            "train_only_kinds": list(data.train_only_kinds),
            "sources": [asdict(s) for s in data.sources],
            "ood": {k: len(v) for k, v in data.ood.items()},
            "control": asdict(prepared.control_source),
            "control_kinds": dict(Counter(str(k) for k in splits.control_kinds.tolist())),
            "notes": data.notes,
        },
        "splits": sizes,
        "selection": {"basis": sweep.basis, "n_configurations": len(sweep.rows), "chosen": chosen.to_json()},
        "metrics": fitted.metrics,
        "test": fitted.test,
        "heldout_kinds": fitted.heldout,
        "ood": fitted.ood,
        "operating_point": fitted.operating,
        "multi_layer": sweep.multi_layer,
        "threshold": asdict(threshold_obj),
        "aggregation": asdict(fitted.aggregation),
        "platt": {"slope": slope, "offset": offset},
        "parity": parity,
        "sweep": [r.to_json() for r in sweep.rows],
        "timings": timings,
    }

    if config.plots:
        report["plots"] = _plots(out, report, fitted, acts, splits)
    return TrainResult(out, out / "report.json", report)


def train(config: TrainConfig, loaded: Any = None) -> TrainResult:
    """Run the six stages; returns the bundle path and the report."""
    from probewatch.models import load_model
    from probewatch.training.report import write_json

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = loaded or load_model(config.model)
    provenance_extra = apply_init_from(config, loaded.fingerprint) if config.init_from else {}
    layers = check_config(config, loaded.n_layers, loaded.model_id)
    probe_id = config.probe_id or _default_id(config)
    out = Path(config.out) if config.out else _default_out(loaded.model_id, probe_id)
    check_target(out, loaded.fingerprint, overwrite_other_model=config.force)

    def timed(name: str, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - t
        return result

    prepared = timed("data_s", prepare_data, config, loaded)
    acts = timed("extract_s", extract, config, loaded, prepared, layers)
    splits = make_splits(config, acts, prepared.data)
    sweep = timed("sweep_s", run_sweep, config, prepared, acts, splits, layers)
    fitted = timed("final_s", fit_final, config, acts, splits, sweep, prepared.data)
    result = export(config, loaded, prepared, acts, splits, sweep, fitted, out, probe_id, timings, provenance_extra)
    timings["total_s"] = time.perf_counter() - t0
    write_json(result.report_path, result.report)
    return result


def _default_id(config: TrainConfig) -> str:
    behaviour = _behaviour(config)
    base = DEFAULT_IDS.get(behaviour, behaviour.replace("_", "-"))
    if len(config.methods) == 1 and config.methods[0] != "logistic":
        return f"{base}-{config.methods[0].replace('_', '-')}"
    return base


def _description(behaviour: str, chosen: SweepRow, basis: str, metrics: dict) -> str:
    what = DESCRIPTIONS.get(behaviour, behaviour)
    return (
        f"{chosen.method} probe on layer {chosen.layer} ({chosen.token_selection}, {'per-token' if chosen.per_token else 'per-example'} "
        f"training, {chosen.aggregation} aggregation) for {what}; chosen by {basis.replace('_', '-')} AUROC. "
        f"Scores are calibrated logits."
    )


def _parity_check(
    out: Path, loaded: Any, pool: Sequence[Dialogue], test_idx: np.ndarray, cached: np.ndarray, config: TrainConfig
) -> dict[str, Any]:
    """Score a few test dialogues through the live scoring path and compare with the cached scores."""
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues

    idx = test_idx[: config.parity_check]
    bundle = load_bundle(out, expected_fingerprint=loaded.fingerprint)
    runtime = ProbeRuntime([bundle])
    results = score_dialogues(
        loaded.model,
        loaded.tokenizer,
        runtime,
        [pool[i] for i in idx],
        batch_size=4,
        max_tokens=config.max_tokens,
        progress=False,
    )
    live = np.array([r.aggregate[bundle.id] for r in results])
    diff = float(np.max(np.abs(live - cached[idx])))
    if diff > 1e-2:
        log.warning("parity check: live scoring differs from cached scoring by %.4g (logit units)", diff)
    return {"n": int(len(idx)), "max_abs_diff": diff}


def _plots(out: Path, report: dict, fitted: FittedProbe, acts: Activations, splits: Splits) -> list[str]:
    from probewatch.training.report import plot_histograms, plot_layer_sweep, plot_operating_points, plot_roc

    name = report["probe_id"]
    chosen = report["selection"]["chosen"]
    scores, labels, test_idx = fitted.scores, splits.pool.labels, splits.pool.test_idx
    control_scores, threshold = fitted.control_scores, fitted.point.value
    w, b = fitted.probe.raw_linear_form()
    paths = [plot_layer_sweep(report["sweep"], chosen, out / "auroc_by_layer.png", f"{name}: AUROC per layer")]
    curves = {f"test split (AUROC {report['metrics']['auroc']:.3f})": (scores[test_idx], labels[test_idx])}
    y_test = labels[test_idx]
    curves["test positives vs control"] = (
        np.concatenate([scores[test_idx][y_test == 1], control_scores]),
        np.r_[np.ones(int((y_test == 1).sum())), np.zeros(len(control_scores))],
    )
    _, ood, _ = acts.layer(fitted.spec.layer)
    for oname, (od, od_labels) in ood.items():
        s = score_all(w, b, od, fitted.spec.token_selection, [fitted.aggregation])[fitted.aggregation.method]
        curves[f"ood: {oname}"] = (s, od_labels)
    op = report["operating_point"]
    points = {
        f"shipped threshold (set by {op['set_by']})": (
            op["shipped"]["fpr_negatives"] or 0.0,
            op["shipped"]["recall"] or 0.0,
        ),
        f"{100 * fitted.point.fpr:g}% control FPR only": (
            op["control_only"]["fpr_negatives"] or 0.0,
            op["control_only"]["recall"] or 0.0,
        ),
    }
    paths.append(plot_roc(curves, out / "roc.png", f"{name}: ROC (points: FPR on test negatives)", points))
    paths.append(
        plot_histograms(
            {
                "positives (test)": scores[test_idx][y_test == 1],
                "negatives (test)": scores[test_idx][y_test == 0],
                "control": control_scores,
            },
            threshold,
            out / "score_hist.png",
            f"{name}: score distributions",
        )
    )
    paths.append(
        plot_operating_points(
            op, out / "operating_points.png", f"{name}: false-positive rates at the shipped threshold"
        )
    )
    return [p.name for p in paths]
