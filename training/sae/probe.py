"""SAE-feature probes (bundle kind `sae_feature`): fit on SAE latents, calibrate, export, verify.

Two probe types, same data, splits, calibration and threshold rule as the linear probes of
`probewatch train` (training/pipeline.py), so the numbers compare directly:

- `l1`: sparse (L1) logistic regression over every latent. Latents are standardised on the fit
  split; C is chosen by grouped 3-fold cross-validation on the fit split (the most regularised C
  within 0.005 AUROC of the best, keeping at most `max_features` latents, default 512 of 3072).
  Refusal needs ~10 latents; deception needs hundreds (a 64-latent cap cost 0.27 test AUROC in
  cross-validation), which is itself a finding docs/sae.md reports.
- `named`: a handful of latents (given, or the top `n_features` by |AUROC - 0.5| on the fit
  split) with weights from a lightly regularised logistic regression on just those.

Per example the probe reads the mean of each latent over the response tokens (or the
generation-prompt token for refusal, or with token selection `answer` the prompt tokens of the
option a multiple-choice reply names: the bundle then carries the vocabulary table, probes/vocab.py);
the runtime scores every token with the same weights and averages, which is the same number for the
`mean` aggregation; other aggregations (max, rolling mean-max) are chosen on the calibration split. Raw
scores are Platt-scaled on the calibration split (score = calibrated logit), the threshold flags 1% of half of the benign
control set, and test / held-out-kind / out-of-distribution / other-control-half figures are
reported. A parity check scores test dialogues through `probewatch.scoring.score_dialogues`
(the live path, through `ProbeRuntime.score_layers`) and compares with the offline scores.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probewatch import envs
from probewatch.errors import ProbewatchError
from probewatch.jsonio import to_jsonable, write_json_atomic
from probewatch.probes import Aggregation, Manifest, ModelRef, Threshold, load_bundle
from probewatch.probes.saes import load_feature_descriptions, load_sae
from probewatch.probes.saes.feature_probe import save_feature_bundle
from probewatch.probes.saes.sae import SAE
from probewatch.training.calibration import CONTROL_FPR

PROBE_TYPES = {"l1": "l1_logistic", "named": "named_features"}


class SAEProbeError(ProbewatchError):
    """An SAE-feature probe cannot be fitted as asked."""


@dataclass
class LatentSet:
    """One ActivationSet seen through the SAE: pooled latents per example + the raw rows to score."""

    pooled: np.ndarray  # [n_examples, d_sae]
    rows: np.ndarray  # [n_rows, d] scored rows (response) or [n_examples, d] (prompt_last)
    offsets: np.ndarray  # [n_examples + 1]
    labels: np.ndarray
    groups: np.ndarray
    kinds: np.ndarray


def find_cached_activations(fingerprint: str, dialogues: Sequence[Any], layer: int, max_tokens: int | None = 1024):
    """An existing activation cache (e.g. from `probewatch train`'s layer sweep) holding `layer`
    for exactly these dialogues, so fitting an SAE probe re-runs no forward pass."""
    from probewatch.training.activation_cache import CACHE_FORMAT, INDEX_FILE, ActivationSet, data_hash

    root = envs.activations_dir() / fingerprint.replace(":", "-")
    if not root.is_dir():
        return None
    want = data_hash(dialogues)
    for index_path in sorted(root.glob(f"*/{INDEX_FILE}")):
        try:
            index = json.loads(index_path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (
            index.get("format") == CACHE_FORMAT  # a cache of an older format is re-extracted, not read
            and index.get("data_hash") == want
            and layer in index.get("layers", [])
            and index.get("max_tokens") == max_tokens
        ):
            return ActivationSet.open(index_path.parent)
    return None


def activations_for(loaded: Any, dialogues: Sequence[Any], layer: int, name: str, progress: bool = True):
    from probewatch.training.activation_cache import ActivationUnion
    from probewatch.training.extract import extract_activations

    found = find_cached_activations(loaded.fingerprint, dialogues, layer)
    if found is not None:
        return found
    blocks: list[list[Any]] = []  # `probewatch train` extracts a pool kind by kind: reuse those caches
    for d in dialogues:
        if blocks and blocks[-1][0].kind == d.kind:
            blocks[-1].append(d)
        else:
            blocks.append([d])
    if len(blocks) > 1:
        parts = [find_cached_activations(loaded.fingerprint, block, layer) for block in blocks]
        if all(p is not None for p in parts):
            return ActivationUnion(parts)
    return extract_activations(
        loaded.model, loaded.tokenizer, dialogues, [layer], loaded.fingerprint, name=name, progress=progress
    )


#: the token selections an SAE-feature probe reads: one prompt_last row, or a sequence of rows per example
TOKEN_SELECTIONS = ("response", "prompt_last", "answer")


def latent_set(sae: SAE, acts: Any, token_selection: str) -> LatentSet:
    from probewatch.training.features import LayerData
    from probewatch.training.sae.interpret import pooled_latents

    layer = sae.cfg.layer
    if token_selection not in TOKEN_SELECTIONS:
        raise SAEProbeError(f"an SAE-feature probe reads {', '.join(TOKEN_SELECTIONS)}, not {token_selection!r}")
    if token_selection == "prompt_last":
        rows = acts.last_rows(layer)
        offsets = np.arange(len(rows) + 1)
    elif token_selection == "answer":  # the named option's rows where the reply is a letter, else the reply's
        view = LayerData.load(acts, layer).reading("answer")
        rows, offsets = view.rows, view.offsets
    else:
        rows, offsets = acts.token_rows(layer)
    return LatentSet(pooled_latents(sae, rows, offsets), rows, offsets, acts.labels, acts.groups, acts.kinds)


def aggregated_scores(
    sae: SAE,
    data: LatentSet,
    feature_ids: np.ndarray,
    w: np.ndarray,
    b: float,
    aggregations: Sequence[Aggregation],
    batch_size: int = 8192,
) -> dict[str, np.ndarray]:
    """Per-example aggregated scores of the latent probe, computed per token like the runtime."""
    from probewatch.training.features import aggregate_segments

    ids = torch.as_tensor(feature_ids, dtype=torch.long)
    token = np.empty(data.rows.shape[0], dtype=np.float64)
    with torch.no_grad():
        for start in range(0, data.rows.shape[0], batch_size):
            x = torch.from_numpy(np.ascontiguousarray(data.rows[start : start + batch_size]))
            token[start : start + batch_size] = sae.encode_features(x, ids).double().numpy() @ w + b
    return {a.method: aggregate_segments(token, data.offsets, a) for a in aggregations}


def _standardizer(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X.mean(0)
    std = X.std(0)
    return mean, np.where(std > 1e-6, std, 1.0)


def _logistic(C: float, penalty: str, seed: int):
    from sklearn.linear_model import LogisticRegression

    if penalty == "l1":
        import sklearn

        # scikit-learn 1.8 deprecated penalty="l1" for l1_ratio=1; older versions ignore l1_ratio
        # unless penalty="elasticnet", so spell it per version
        new_api = tuple(int(p) for p in sklearn.__version__.split(".")[:2] if p.isdigit()) >= (1, 8)
        l1 = {"l1_ratio": 1.0} if new_api else {"penalty": "l1"}
        return LogisticRegression(
            solver="liblinear", C=C, class_weight="balanced", max_iter=5000, random_state=seed, **l1
        )
    return LogisticRegression(C=C, class_weight="balanced", max_iter=5000)


def fit_l1(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    weight: np.ndarray,
    max_features: int,
    seed: int,
    Cs: Sequence[float] = tuple(np.logspace(-2.5, 0.5, 10)),
    C: float | None = None,
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """(coef over standardised X, intercept, selection info) of the L1 probe (C chosen by CV unless given)."""
    from sklearn.metrics import roc_auc_score

    from probewatch.training.estimators import validation_folds

    if C is not None:
        model = _logistic(C, "l1", seed).fit(X, y, sample_weight=weight)
        return model.coef_[0].astype(np.float64), float(model.intercept_[0]), {"C": C}

    folds = list(validation_folds(y, groups, 3, seed))
    cv: dict[float, tuple[float, float]] = {}
    for C in Cs:
        aucs, nnz = [], []
        for tr, va in folds:
            model = _logistic(C, "l1", seed).fit(X[tr], y[tr], sample_weight=weight[tr])
            aucs.append(roc_auc_score(y[va], model.decision_function(X[va])))
            nnz.append(int((model.coef_ != 0).sum()))
        cv[float(C)] = (float(np.mean(aucs)), float(np.mean(nnz)))
    allowed = {C: v for C, v in cv.items() if v[1] <= max_features} or {min(cv): cv[min(cv)]}
    best = max(a for a, _ in allowed.values())
    C = min(C for C, (a, _) in allowed.items() if a >= best - 0.005)
    model = _logistic(C, "l1", seed).fit(X, y, sample_weight=weight)
    coef = model.coef_[0].astype(np.float64)
    return (
        coef,
        float(model.intercept_[0]),
        {"C": C, "cv": {str(k): {"auroc": v[0], "n_latents": v[1]} for k, v in cv.items()}},
    )


def fit_named(X: np.ndarray, y: np.ndarray, weight: np.ndarray, ids: np.ndarray, seed: int) -> tuple[np.ndarray, float]:
    model = _logistic(1.0, "l2", seed).fit(X[:, ids], y, sample_weight=weight)
    coef = np.zeros(X.shape[1])
    coef[ids] = model.coef_[0]
    return coef, float(model.intercept_[0])


def fit_and_export_sae_probe(
    loaded: Any,
    sae_dir: Path,
    behaviour: str,
    method: str = "l1",
    features: Sequence[int] | None = None,
    n_features: int = 8,
    max_features: int = 512,
    aggregation: str | None = None,
    token_selection: str | None = None,
    fpr: float = CONTROL_FPR,
    probe_id: str | None = None,
    out: Path | None = None,
    embed_sae: bool = False,
    data_dir: Path | None = None,
    seed: int = 0,
    progress: bool = True,
    parity_check: int = 6,
    builder_options: dict[str, Any] | None = None,
    data: Any = None,
    control: Sequence[Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Fit, calibrate, threshold, evaluate and export one sae_feature bundle; returns its summary.

    `data` (a BehaviourData) and `control` (dialogues) replace the behaviour's builder and the
    generated control set (tests, or a user's own data). `token_selection`: the tokens the probe reads
    (`TOKEN_SELECTIONS`; default the behaviour data's)."""
    from probewatch.training.calibration import calibrated_threshold, platt_fit
    from probewatch.training.datasets.control import build_control
    from probewatch.training.features import example_weights
    from probewatch.training.metrics import detection_metrics
    from probewatch.training.sae.interpret import auroc_columns
    from probewatch.training.splits import check_disjoint, grouped_split, leave_one_kind_out

    if method not in PROBE_TYPES:
        raise SAEProbeError(f"unknown method {method!r}: l1 or named")
    t0 = time.perf_counter()
    sae_dir = Path(sae_dir)
    sae = load_sae(sae_dir, expected_d_model=loaded.d_model, expected_fingerprint=loaded.fingerprint)
    layer = sae.cfg.layer
    if data is None:
        # the same data as `probewatch train` (model's own answers, auxiliary kinds), kind by kind, so the
        # activation caches of the linear probe's sweep are reused
        from probewatch.training.extract import contiguous_by_kind
        from probewatch.training.stage_data import pool_data
        from probewatch.training.train_config import TrainConfig

        data = pool_data(
            TrainConfig(
                behaviour=behaviour,
                data_dir=data_dir,
                seed=seed,
                builder_options=dict(builder_options or {}),
                progress=progress,
            ),
            loaded,
        )
        data.pool = contiguous_by_kind(data.pool)
    if control is None:
        from probewatch.training.datasets.common import resolve_data_dir

        control, control_source = build_control(loaded, resolve_data_dir(data_dir), seed=seed, progress=progress)
    else:
        from probewatch.training.datasets import Source

        control_source = Source("control (given)", "", "", len(control))
    selection = token_selection or data.token_selection
    pool = latent_set(sae, activations_for(loaded, data.pool, layer, f"{behaviour}-pool", progress), selection)
    ood = {
        name: latent_set(sae, activations_for(loaded, ds, layer, f"{behaviour}-ood-{name}", progress), selection)
        for name, ds in data.ood.items()
    }
    ctrl = latent_set(sae, activations_for(loaded, control, layer, f"{behaviour}-control", progress), selection)

    # the same grouped splits as `probewatch train` (same seeds): fit / calibration / test
    labels, groups, kinds = pool.labels, pool.groups, pool.kinds
    rest, test_idx = grouped_split(groups, labels, 0.2, seed)
    fit_idx, val_idx = grouped_split(groups, labels, 0.25, seed + 1, idx=rest)
    check_disjoint(groups, rest, test_idx)
    check_disjoint(groups, fit_idx, val_idx)

    def fit(
        idx: np.ndarray, C: float | None = None
    ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray, dict[str, Any]]:
        X = pool.pooled[idx]
        mean, scale = _standardizer(X)
        Xs = (X - mean) / scale
        y = labels[idx]
        weight = example_weights(idx, kinds, True)
        if method == "l1":
            coef, intercept, info = fit_l1(Xs, y, groups[idx], weight, max_features, seed, C=C)
        else:
            if features:
                ids = np.asarray(sorted({int(f) for f in features}))
                if ids.min() < 0 or ids.max() >= sae.cfg.d_sae:
                    raise SAEProbeError(f"--features must lie in [0, {sae.cfg.d_sae})")
            else:
                au = auroc_columns(X, y)
                ids = np.sort(np.argsort(-np.abs(au - 0.5), kind="stable")[:n_features])
            coef, intercept = fit_named(Xs, y, weight, ids, seed)
            info = {"selected_by": "given" if features else f"top {n_features} |AUROC-0.5| on the fit split"}
        # raw-latent form: score = a . (coef / scale) + intercept - coef . (mean / scale)
        w_raw = coef / scale
        b_raw = intercept - float((coef * mean / scale).sum())
        keep = np.flatnonzero(coef != 0)
        if keep.size == 0:
            raise SAEProbeError("the L1 probe kept no latent; lower the penalty (raise --max-features)")
        return keep, b_raw, w_raw[keep], coef, info

    ids, b, w, _, fit_info = fit(fit_idx)
    # softmax needs a temperature in the score's units, which the latent probe's Platt fold does not carry
    agg_names = ["last"] if selection == "prompt_last" else [a for a in data.aggregations if a != "softmax"]
    aggs = [Aggregation(method=a) for a in agg_names]
    raw = aggregated_scores(sae, pool, ids, w, b, aggs)
    if aggregation:
        chosen_agg = aggregation
    else:
        from probewatch.metrics import auroc as _auroc

        chosen_agg = max(
            agg_names, key=lambda a: (round(_auroc(raw[a][val_idx], labels[val_idx]), 3), -agg_names.index(a))
        )
    agg = Aggregation(method=chosen_agg)
    slope, offset = platt_fit(raw[chosen_agg][val_idx], labels[val_idx])
    w, b = w * slope, b * slope + offset
    scores = aggregated_scores(sae, pool, ids, w, b, [agg])[chosen_agg]
    control_scores = aggregated_scores(sae, ctrl, ids, w, b, [agg])[chosen_agg]
    perm = np.random.default_rng(seed).permutation(len(control_scores))
    control_cal, control_held = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    threshold = calibrated_threshold(control_scores[control_cal], fpr)
    test = detection_metrics(scores[test_idx], labels[test_idx], control_scores[control_cal], fpr)
    test["fpr_control_heldout"] = float((control_scores[control_held] >= threshold).mean())
    ood_metrics = {
        name: detection_metrics(
            aggregated_scores(sae, od, ids, w, b, [agg])[chosen_agg], od.labels, control_scores[control_cal], fpr
        )
        for name, od in ood.items()
    }
    heldout: dict[str, dict[str, Any]] = {}
    for kind, tr, te in leave_one_kind_out(kinds, labels, groups):
        k_ids, k_b, k_w, _, _ = fit(tr, fit_info.get("C"))  # same penalty as the final probe
        s = aggregated_scores(sae, pool, k_ids, k_w, k_b, [agg])[chosen_agg]
        c = aggregated_scores(sae, ctrl, k_ids, k_w, k_b, [agg])[chosen_agg]
        m = detection_metrics(s[te], labels[te], c[control_cal], fpr)
        heldout[kind] = {"auroc": m["auroc"], "recall_at_fpr_control": m.get("recall_at_fpr"), "n": int(len(te))}

    heldout_aurocs = [v["auroc"] for v in heldout.values() if v["auroc"] is not None]
    metrics = {
        "auroc": test["auroc"],
        "recall_at_fpr_control": test.get("recall_at_fpr"),
        "fpr": fpr,
        "fpr_control_heldout": test["fpr_control_heldout"],
        "auroc_heldout_kind": float(np.mean(heldout_aurocs)) if heldout_aurocs else None,
        "auroc_heldout_kind_per_kind": {k: v["auroc"] for k, v in heldout.items()},
        "auroc_ood": {k: v["auroc"] for k, v in ood_metrics.items()},
        "recall_at_fpr_control_ood": {k: v.get("recall_at_fpr") for k, v in ood_metrics.items()},
        "n_test": int(len(test_idx)),
        "n_latents": int(len(ids)),
        "split": "grouped by source item (group)",
    }

    descriptions = load_feature_descriptions(sae_dir)
    probe_type = PROBE_TYPES[method]
    probe_id = probe_id or f"sae-{behaviour.replace('_', '-')}-{method}"
    out = Path(out) if out else envs.user_bundles_dir() / loaded.model_id.replace("/", "--") / probe_id
    order = np.argsort(-np.abs(w))
    feature_list = [
        {"id": int(ids[i]), "weight": round(float(w[i]), 6), "description": descriptions.get(int(ids[i]), "")}
        for i in order
    ]
    manifest = Manifest(
        id=probe_id,
        behaviour=behaviour,
        kind="sae_feature",
        model=ModelRef(loaded.model_id, loaded.fingerprint, loaded.d_model, loaded.n_layers),
        layer=layer,
        threshold=Threshold(
            value=float(threshold),
            method="fpr",
            fpr=fpr,
            calibration_set=control_source.name,
            n_calibration=int(len(control_cal)),
        ),
        aggregation=agg,
        token_selection=selection,
        normalization="none",
        description=(
            f"{behaviour} from {len(ids)} latents of SAE {sae_dir.name} ({probe_type}); test AUROC "
            f"{metrics['auroc']:.3f}, recall {metrics['recall_at_fpr_control'] or 0:.2f} at {fpr:.0%} control FPR"
        ),
        metrics=to_jsonable(metrics),
        training=to_jsonable(
            {
                "probe_type": probe_type,
                "layer": layer,
                "token_selection": selection,
                "aggregation": chosen_agg,
                "platt": {"slope": slope, "offset": offset, "fitted_on": "calibration split"},
                "sizes": {
                    "pool": len(labels),
                    "fit": len(fit_idx),
                    "calibration": len(val_idx),
                    "test": len(test_idx),
                    "control_calibration": len(control_cal),
                    "control_heldout": len(control_held),
                },
                "fit": fit_info,
                "seed": seed,
                "data": [s.__dict__ for s in data.sources],
                "control": control_source.__dict__,
            }
        ),
        extra={"probe_type": probe_type, "score_units": "calibrated logit (Platt)", "features": feature_list},
    )
    from probewatch.probes.vocab import vocabulary_for  # `answer`: the sidecar reads the reply's letter from ids

    vocab = vocabulary_for(selection, loaded.tokenizer, probe_id)
    save_feature_bundle(out, manifest, sae_dir, ids, w, b, embed_sae=embed_sae, extra_tensors=vocab)
    bundle = load_bundle(out, expected_fingerprint=loaded.fingerprint, expected_d_model=loaded.d_model)
    parity = _parity(loaded, bundle, data.pool, test_idx[:parity_check], scores) if parity_check else None
    summary = {
        "path": str(out),
        "probe_id": probe_id,
        "behaviour": behaviour,
        "probe_type": probe_type,
        "sae": sae_dir.name,
        "layer": layer,
        "n_latents": int(len(ids)),
        "aggregation": chosen_agg,
        "threshold": float(threshold),
        "metrics": metrics,
        "test": test,
        "ood": ood_metrics,
        "heldout_kinds": heldout,
        "features": feature_list[:20],
        "parity": parity,
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
    }
    write_json_atomic(out / "report.json", summary, indent=1)
    return to_jsonable(summary)


def _parity(loaded: Any, bundle: Any, pool: Sequence[Any], idx: np.ndarray, offline: np.ndarray) -> dict[str, Any]:
    """Score a few dialogues through the live scoring path and compare with the offline scores."""
    from probewatch.probes import ProbeRuntime
    from probewatch.scoring import score_dialogues

    runtime = ProbeRuntime([bundle], d_model=loaded.d_model)
    results = score_dialogues(loaded.model, loaded.tokenizer, runtime, [pool[i] for i in idx], progress=False)
    live = np.array([r.aggregate[bundle.id] for r in results])
    diff = float(np.max(np.abs(live - offline[idx]))) if len(idx) else 0.0
    if diff > 1e-2 * (1 + float(np.max(np.abs(offline[idx])))):
        raise SAEProbeError(f"{bundle.path}: live scoring differs from the offline scores by {diff:.3g}")
    return {"n": int(len(idx)), "max_abs_diff": diff}
