"""`probewatch train`: data -> activations -> sweep -> fit -> calibrate -> bundle + report.

Steps (each cached or cheap to redo):
1. data: the behaviour's builder (or the user's JSONL files) and the benign control set;
2. extraction of the sweep layers for pool, out-of-distribution sets and control (cached shards);
3. grouped splits of the pool: fit / calibration (validation) / test, by group;
4. sweep layer x method x aggregation (validation, leave-one-kind-out, out-of-distribution);
5. the chosen configuration is fitted on the fit split, Platt-scaled on the calibration split
   (scores become calibrated logits), thresholded at the target FPR on half of the control set;
   the test split, the other control half, every held-out kind and the OOD sets are reported;
6. bundle + report.json + plots in `--out`; a parity check scores a few test dialogues through
   `probewatch.scoring.score_dialogues` (the live path) and compares with the cached scores.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.behaviours import DEFAULT_PROBE_IDS
from probewatch.data.dialogue import Dialogue, load_dialogues
from probewatch.errors import ProbewatchError
from probewatch.probes import Aggregation, Threshold
from probewatch.probes.errors import FingerprintMismatchError
from probewatch.training.calibration import calibrated_threshold, platt_fit
from probewatch.training.datasets import BehaviourData, Source, build_behaviour_data
from probewatch.training.export import METHOD_BY_KIND, check_target, export_bundle
from probewatch.training.extract import ActivationSet, contiguous_by_kind, extract_activations, extract_by_kind
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
)

log = logging.getLogger("probewatch.training")

METHODS = ("logistic", "mean_diff", "lat")
DEFAULT_IDS = DEFAULT_PROBE_IDS


class TrainingError(ProbewatchError):
    """Training cannot proceed as configured (bad flags, unusable data)."""


@dataclass
class TrainConfig:
    behaviour: str | None = None
    model: str | None = None
    data_dir: str | Path | None = None
    data_files: Sequence[Path] = ()
    ood_files: Sequence[Path] = ()
    control_file: Path | None = None
    layers: Sequence[int] | None = None
    methods: Sequence[str] = METHODS
    aggregations: Sequence[str] | None = None
    token_selections: Sequence[str] | None = None
    per_token: bool | None = None  # None: per-example sweep, per-token tried on the best config
    standardize: bool | None = None  # None: logistic standardised, mean_diff/lat raw
    fpr: float = 0.01
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


def default_layers(n_layers: int) -> list[int]:
    """Every other layer from 1 (the sweep default; extraction stores only these)."""
    return list(range(1, n_layers, 2)) or [0]


def _default_out(model_id: str, probe_id: str) -> Path:
    from probewatch import envs

    return envs.user_bundles_dir() / model_id.replace("/", "--") / probe_id


def apply_init_from(config: TrainConfig, fingerprint: str) -> dict[str, Any]:
    """Take settings from an existing bundle being updated; refuse one made for another model."""
    from probewatch.probes import load_bundle

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
        return BehaviourData(config.behaviour, pool, ood, sources, selection, aggs, {"custom_data": True})
    options = dict(config.builder_options)
    if config.behaviour in ("deception", "alignment_faking") and loaded is not None and "respond" not in options:
        from probewatch.training.datasets.control import cached_responses

        def respond(prompts: list[str], max_new_tokens: int = 32) -> list[str]:
            return cached_responses(loaded, prompts, max_new_tokens, "responses", config.progress)

        options["respond"] = respond
    data = build_behaviour_data(config.behaviour, config.data_dir, seed=config.seed, **options)
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


def train(config: TrainConfig, loaded: Any = None) -> TrainResult:
    """Run the whole pipeline; returns the bundle path and the report."""
    from probewatch.models import load_model

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = loaded or load_model(config.model)
    provenance_extra: dict[str, Any] = {}
    if config.init_from:
        provenance_extra = apply_init_from(config, loaded.fingerprint)
    if config.behaviour is None:
        raise TrainingError("--behaviour is required (deception, refusal or alignment_faking)")
    for method in config.methods:
        if method not in METHODS:
            raise TrainingError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    n_layers = loaded.n_layers
    layers = sorted({int(layer) for layer in (config.layers or default_layers(n_layers))})
    bad = [layer for layer in layers if not 0 <= layer < n_layers]
    if bad:
        raise TrainingError(f"layers {bad} out of range for {loaded.model_id} ({n_layers} layers: 0..{n_layers - 1})")
    probe_id = config.probe_id or _default_id(config)
    out = Path(config.out) if config.out else _default_out(loaded.model_id, probe_id)
    check_target(out, loaded.fingerprint, overwrite_other_model=config.force)

    # 1. data -----------------------------------------------------------------------------------
    data = _pool_data(config, loaded)
    _check_labels(data.pool, "training data")
    selections = list(
        config.token_selections
        or [data.token_selection]
        + (["prompt_last"] if config.behaviour == "alignment_faking" and not config.data_files else [])
    )
    agg_names = list(config.aggregations or data.aggregations)
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
        )
    timings["data_s"] = time.perf_counter() - t0

    # 2. activations ------------------------------------------------------------------------------
    t1 = time.perf_counter()

    def extract(name: str, dialogues: Sequence[Dialogue]) -> ActivationSet:
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

    data.pool = contiguous_by_kind(data.pool)  # one cache per kind: new data re-extracts only its kind
    pool_acts = extract_by_kind(
        loaded.model,
        loaded.tokenizer,
        data.pool,
        layers,
        loaded.fingerprint,
        name=config.behaviour,
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        dtype=config.cache_dtype,
        progress=config.progress,
    )
    ood_acts = {name: extract(f"{config.behaviour}-ood-{name}", ds) for name, ds in data.ood.items()}
    control_acts = extract("control", control)
    timings["extract_s"] = time.perf_counter() - t1

    # 3. splits -------------------------------------------------------------------------------------
    labels, groups, kinds = pool_acts.labels, pool_acts.groups, pool_acts.kinds
    train_only = tuple(data.train_only_kinds)
    auxiliary = np.isin(kinds, list(train_only))
    rest, test_idx = grouped_split(groups, labels, config.test_size, config.seed, idx=np.flatnonzero(~auxiliary))
    fit_idx, val_idx = grouped_split(groups, labels, config.cal_size, config.seed + 1, idx=rest)
    fit_idx = np.sort(np.concatenate([fit_idx, np.flatnonzero(auxiliary)]))
    check_disjoint(groups, rest, test_idx)
    check_disjoint(groups, fit_idx, val_idx)
    check_disjoint(groups, fit_idx, test_idx)
    pool = PoolArrays(labels, groups, kinds, fit_idx, val_idx, test_idx, train_only)
    basis = selection_basis(pool, bool(data.ood))
    aggregations = _aggregation_objs(agg_names, config.window, config.alpha)

    perm = np.random.default_rng(config.seed).permutation(len(control_acts))
    control_cal, control_held = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])

    # 4. sweep ----------------------------------------------------------------------------------------
    t2 = time.perf_counter()
    rows: list[SweepRow] = []
    per_token_sweep = bool(config.per_token)
    cache: dict[int, tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]] = {}

    def layer_data(layer: int) -> tuple[LayerData, dict[str, tuple[LayerData, np.ndarray]], LayerData]:
        if layer not in cache:
            cache.clear()  # one layer in memory at a time
            cache[layer] = (
                LayerData.load(pool_acts, layer),
                {name: (LayerData.load(a, layer), a.labels) for name, a in ood_acts.items()},
                LayerData.load(control_acts, layer),
            )
        return cache[layer]

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(selections) * len(layers), desc=f"sweep {config.behaviour}", unit="layer", disable=not config.progress
    )
    for selection in selections:
        sel_aggs = aggregations if selection == "response" else _aggregation_objs(["last"], config.window, config.alpha)
        for layer in layers:
            ld, ood, control_ld = layer_data(layer)
            rows += sweep_layer(
                ld,
                ood,
                pool,
                selection,
                config.methods,
                sel_aggs,
                per_token_sweep and selection == "response",
                config.seed,
                config.balance_kinds,
                config.standardize,
                control=control_ld.subset(control_cal),
                fpr=config.fpr,
            )
            bar.update(1)
    bar.close()
    chosen = best_row(rows, basis)
    if config.per_token is None and chosen.token_selection == "response":
        ld, ood, control_ld = layer_data(chosen.layer)
        extra_rows = sweep_layer(
            ld,
            ood,
            pool,
            "response",
            [chosen.method],
            aggregations,
            True,
            config.seed,
            config.balance_kinds,
            config.standardize,
            control=control_ld.subset(control_cal),
            fpr=config.fpr,
        )
        rows += extra_rows
        chosen = best_row([chosen, *extra_rows], basis)
    timings["sweep_s"] = time.perf_counter() - t2
    log.info(
        "chosen: layer %d, %s, %s, per_token=%s, aggregation %s (%s %.3f, validation %.3f)",
        chosen.layer,
        chosen.method,
        chosen.token_selection,
        chosen.per_token,
        chosen.aggregation,
        basis,
        chosen.selection_score(basis),
        chosen.val_auroc or float("nan"),
    )

    # 5. final fit, calibration, threshold ------------------------------------------------------------------
    t3 = time.perf_counter()
    spec = ProbeSpec(
        chosen.method, chosen.layer, chosen.token_selection, chosen.per_token, chosen.aggregation, config.standardize
    )
    agg = Aggregation(method=chosen.aggregation, window=config.window, alpha=config.alpha)
    ld, ood, control_ld = layer_data(chosen.layer)
    probe = fit_probe(spec, ld, pool, fit_idx, config.seed, config.balance_kinds)
    w, b = probe.raw_linear_form()
    raw = score_all(w, b, ld, spec.token_selection, [agg])[agg.method]
    slope, offset = platt_fit(raw[val_idx], labels[val_idx])
    probe.affine_(slope, offset)
    w, b = probe.raw_linear_form()
    scores = score_all(w, b, ld, spec.token_selection, [agg])[agg.method]
    control_scores = score_all(w, b, control_ld, spec.token_selection, [agg])[agg.method]
    threshold = calibrated_threshold(control_scores[control_cal], config.fpr)
    test_metrics = detection_metrics(scores[test_idx], labels[test_idx], control_scores[control_cal], config.fpr)
    test_metrics["fpr_control_heldout"] = float((control_scores[control_held] >= threshold).mean())
    test_metrics["recall_at_fpr_negatives"] = detection_metrics(scores[test_idx], labels[test_idx], None, config.fpr)[
        "recall_at_fpr"
    ]
    ood_metrics = {}
    for name, (od, od_labels) in ood.items():
        s = score_all(w, b, od, spec.token_selection, [agg])[agg.method]
        ood_metrics[name] = detection_metrics(s, od_labels, control_scores[control_cal], config.fpr)
    heldout = heldout_kind_recall(
        spec, ld, pool, control_ld.subset(control_cal), config.fpr, config.seed, config.balance_kinds, agg
    )
    timings["final_s"] = time.perf_counter() - t3

    # 6. export + report ----------------------------------------------------------------------------------------
    heldout_aurocs = [v["auroc"] for v in heldout.values() if v["auroc"] is not None]
    test_kinds = kinds[test_idx]
    per_kind_test = {}
    for kind in sorted(set(test_kinds.tolist())):
        sel = test_kinds == kind
        if len(set(labels[test_idx][sel].tolist())) == 2:
            per_kind_test[kind] = detection_metrics(scores[test_idx][sel], labels[test_idx][sel])["auroc"]
    metrics = {
        "auroc": test_metrics["auroc"],
        "auroc_test_per_kind": per_kind_test,
        "recall_at_fpr_control": test_metrics["recall_at_fpr"],
        "fpr": config.fpr,
        "fpr_control_heldout": test_metrics["fpr_control_heldout"],
        "auroc_heldout_kind": float(np.mean(heldout_aurocs)) if heldout_aurocs else None,
        "auroc_heldout_kind_per_kind": {k: v["auroc"] for k, v in heldout.items()},
        "auroc_ood": {k: v["auroc"] for k, v in ood_metrics.items()},
        "recall_at_fpr_control_ood": {k: v["recall_at_fpr"] for k, v in ood_metrics.items()},
        "n_test": len(test_idx),
        "split": "grouped by source item (group)",
    }
    sizes = {
        "pool": len(labels),
        "fit": len(fit_idx),
        "calibration": len(val_idx),
        "test": len(test_idx),
        "control_calibration": len(control_cal),
        "control_heldout": len(control_held),
    }
    training = {
        "method": chosen.method,
        "layer": chosen.layer,
        "per_token": chosen.per_token,
        "C": getattr(probe, "C_", None),
        "standardize": bool(probe.standardize),
        "seed": config.seed,
        "token_selection": chosen.token_selection,
        "aggregation": chosen.aggregation,
        "balance_kinds": config.balance_kinds,
        "selected_by": basis,
        "n_configurations": len(rows),
        "layers_swept": layers,
        "sizes": sizes,
        "kinds": _kinds_summary(data.pool),
        "train_only_kinds": list(train_only),
        "data": [asdict(s) for s in data.sources],
        "control": asdict(control_source),
        "activation_cache": pool_acts.index["key"][:16],
        "platt": {"slope": slope, "offset": offset, "fitted_on": "calibration split"},
        "command": config.command,
        **provenance_extra,
    }
    description = _description(config.behaviour, chosen, basis, metrics)
    threshold_obj = Threshold(
        value=float(threshold),
        method="fpr",
        fpr=config.fpr,
        calibration_set=control_source.name,
        n_calibration=len(control_cal),
    )
    export_bundle(
        out,
        probe,
        probe_id=probe_id,
        behaviour=config.behaviour,
        method=chosen.method,
        model_id=loaded.model_id,
        fingerprint=loaded.fingerprint,
        d_model=loaded.d_model,
        n_layers=n_layers,
        layer=chosen.layer,
        token_selection=chosen.token_selection,
        aggregation=agg,
        threshold=threshold_obj,
        metrics=metrics,
        training=training,
        description=description,
        version=config.version or "1",
        extra={"direction_norm": float(np.linalg.norm(w)), "score_units": "calibrated logit (Platt)"},
    )
    parity = _parity_check(out, loaded, data.pool, test_idx, scores, config) if config.parity_check else None
    report = {
        "probe_id": probe_id,
        "behaviour": config.behaviour,
        "bundle": str(out),
        "model": {
            "id": loaded.model_id,
            "fingerprint": loaded.fingerprint,
            "n_layers": n_layers,
            "d_model": loaded.d_model,
        },
        "command": config.command,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
        "data": {
            "kinds": _kinds_summary(data.pool),
            "train_only_kinds": list(train_only),
            "sources": [asdict(s) for s in data.sources],
            "ood": {k: len(v) for k, v in data.ood.items()},
            "control": asdict(control_source),
            "notes": data.notes,
        },
        "splits": sizes,
        "selection": {"basis": basis, "n_configurations": len(rows), "chosen": chosen.to_json()},
        "metrics": metrics,
        "test": test_metrics,
        "heldout_kinds": heldout,
        "ood": ood_metrics,
        "threshold": asdict(threshold_obj),
        "platt": {"slope": slope, "offset": offset},
        "parity": parity,
        "sweep": [r.to_json() for r in rows],
        "timings": timings,
    }
    from probewatch.training.report import write_json

    if config.plots:
        report["plots"] = _plots(out, report, scores, labels, test_idx, control_scores, threshold, ood, w, b, spec, agg)
    timings["total_s"] = time.perf_counter() - t0
    report_path = write_json(out / "report.json", report)
    return TrainResult(out, report_path, report)


def _default_id(config: TrainConfig) -> str:
    base = DEFAULT_IDS.get(config.behaviour, config.behaviour.replace("_", "-"))
    if len(config.methods) == 1 and config.methods[0] != "logistic":
        return f"{base}-{config.methods[0].replace('_', '-')}"
    return base


def _description(behaviour: str, chosen: SweepRow, basis: str, metrics: dict) -> str:
    what = {
        "deception": "deceptive statements or answers (label 1) vs honest ones",
        "refusal": "harmful requests the model should refuse (read at the generation-prompt position)",
        "alignment_faking": "monitored / used-for-training / being-evaluated framing vs unmonitored deployment",
    }.get(behaviour, behaviour)
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


def _plots(
    out: Path,
    report: dict,
    scores: np.ndarray,
    labels: np.ndarray,
    test_idx: np.ndarray,
    control_scores: np.ndarray,
    threshold: float,
    ood: dict,
    w: np.ndarray,
    b: float,
    spec: ProbeSpec,
    agg: Aggregation,
) -> list[str]:
    from probewatch.training.report import plot_histograms, plot_layer_sweep, plot_roc

    name = report["probe_id"]
    chosen = report["selection"]["chosen"]
    paths = [plot_layer_sweep(report["sweep"], chosen, out / "auroc_by_layer.png", f"{name}: AUROC per layer")]
    curves = {f"test split (AUROC {report['metrics']['auroc']:.3f})": (scores[test_idx], labels[test_idx])}
    y_test = labels[test_idx]
    curves["test positives vs control"] = (
        np.concatenate([scores[test_idx][y_test == 1], control_scores]),
        np.r_[np.ones(int((y_test == 1).sum())), np.zeros(len(control_scores))],
    )
    for oname, (od, od_labels) in ood.items():
        curves[f"ood: {oname}"] = (score_all(w, b, od, spec.token_selection, [agg])[agg.method], od_labels)
    t = report["test"]
    points = {
        f"threshold @ {100 * t['fpr_target']:.0f}% FPR on control": (
            float((control_scores >= threshold).mean()),
            float(t["recall_at_fpr"] or 0.0),
        )
    }
    paths.append(plot_roc(curves, out / "roc.png", f"{name}: ROC", points))
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
    return [p.name for p in paths]
