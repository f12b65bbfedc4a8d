"""An existing bundle scored on this run's held-out data: before -> after on the same examples.

A retrain changes the pool, the splits and the out-of-distribution sets (refusal's request formats,
deception's new kinds), so the previous report's numbers were measured on other data and a
"previous run -> this run" table compares two different tests. `compare_bundle` scores a bundle
(typically the shipped one a regeneration replaces) on this run's test split and on every
out-of-distribution set, from the cached activations and exactly the way stage 5 scores the new probe
(`score_all` on the raw-space linear form; a multi-layer bundle reads its layers side by side). It
needs every layer the bundle reads in this run's cache and a linear bundle; otherwise it says why not.

Given this run's scores on the same sets, each set also gets the change "this run − bundle" with a paired,
stratified bootstrap interval (`paired_auroc_delta`): out-of-distribution sets can be small (refusal_val
holds 39 harmful requests, where 0.001 AUROC is six of 6,240 pairs), so a difference in the fourth place
is reported with the interval that says whether it is one.

A bundle whose own run chose it on an out-of-distribution set (report.json `selection.basis` "ood": the best of
its sweep there) has a before on that set that is a maximum over its candidates, so it is optimistic;
`selected_on` names those sets and the renderers say so beside the number.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.metrics import auroc
from probewatch.training.features import score_all
from probewatch.training.multilayer import MultiLayerActivations
from probewatch.training.stage_activations import Activations, Splits


@dataclass
class BundleComparison:
    """AUROC of one existing bundle on this run's sets (None where a set has one class)."""

    path: str
    probe_id: str | None = None
    layers: list[int] = field(default_factory=list)
    version: str | None = None
    created_at: str | None = None
    test_auroc: float | None = None
    test_per_kind: dict[str, float] = field(default_factory=dict)
    ood_auroc: dict[str, float] = field(default_factory=dict)
    skipped: str | None = None  # why it could not be scored on this run's data
    # False: the bundle was trained on another pool, so the (re-drawn) test split may hold its training
    # examples and its test AUROC is optimistic, not a before; None: the bundle has no report to tell
    test_same_split: bool | None = None
    # set ("test" or an out-of-distribution set) -> [this run − bundle, low, high]: AUROC change, 95% interval
    delta_ci: dict[str, list[float]] = field(default_factory=dict)
    # out-of-distribution sets the bundle's own run chose it on: its AUROC there is a best-of-sweep, not a before
    selected_on: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> BundleComparison:
        return cls(**d)


#: bootstrap draws and interval of the paired AUROC change
BOOTSTRAP_DRAWS = 1000
CI_LEVEL = 0.95


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    return auroc(scores, labels) if len(np.unique(labels)) == 2 else None


def paired_auroc_delta(
    before: np.ndarray, after: np.ndarray, labels: np.ndarray, draws: int = BOOTSTRAP_DRAWS, seed: int = 0
) -> list[float] | None:
    """[AUROC(after) − AUROC(before), low, high]: the change on the same examples with a `CI_LEVEL`
    interval from a bootstrap that resamples positives and negatives separately (class sizes fixed) and
    scores both probes on every resample, so what the two share cancels. None with one class."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) != 2 or len(before) != len(labels) or len(after) != len(labels):
        return None
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    deltas = np.empty(draws)
    for i in range(draws):
        at = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        deltas[i] = auroc(after[at], labels[at]) - auroc(before[at], labels[at])
    tail = (1 - CI_LEVEL) / 2
    low, high = np.quantile(deltas, [tail, 1 - tail])
    return [auroc(after, labels) - auroc(before, labels), float(low), float(high)]


#: the test split's name among a comparison's sets
TEST_SET = "test"


def befores(compared: Mapping[str, Any]) -> dict[str, tuple[float | None, list[float] | None]]:
    """Set -> (the bundle's AUROC, [change, low, high] or None) for every set where the bundle's AUROC is a
    before: each out-of-distribution set, and the test split unless the bundle was trained on another pool
    (`test_same_split` False: the re-drawn split may hold its training rows). One rule for every renderer
    of a `BundleComparison.to_json()`; empty for a skipped comparison."""
    if compared.get("skipped"):
        return {}
    cis = compared.get("delta_ci") or {}  # reports before the interval existed have none
    sets: dict[str, float | None] = {}
    if compared.get("test_same_split") is not False:
        sets[TEST_SET] = compared.get("test_auroc")
    sets.update(compared.get("ood_auroc") or {})
    return {k: (v, cis.get(k)) for k, v in sets.items()}


def pool_signature(kinds: Mapping[str, Mapping[str, Any]], n_test: int) -> dict[str, Any]:
    """What decides a grouped split: examples and groups per kind (report.json `data.kinds`, i.e.
    `stage_export.kinds_summary`), and the test split's size. Two runs with the same signature (and seed)
    draw the same test split; a kind added or resized re-draws all of it."""
    return {"kinds": {str(k): [int(v["n"]), int(v["groups"])] for k, v in sorted(kinds.items())}, "test": int(n_test)}


def bundle_report(path: str | Path) -> dict[str, Any] | None:
    """The report.json a bundle folder carries, or None (none, unreadable, not an object)."""
    from probewatch.training.report import REPORT_FILENAME

    try:
        theirs = json.loads((Path(path) / REPORT_FILENAME).read_text())
    except (OSError, ValueError):
        return None
    return theirs if isinstance(theirs, dict) else None


def _same_split(theirs: Mapping[str, Any] | None, this_pool: Mapping[str, Any] | None) -> bool | None:
    """Whether the bundle's report describes this run's pool; None where either side is unknown."""
    if theirs is None or this_pool is None:
        return None
    kinds, n_test = (theirs.get("data") or {}).get("kinds"), (theirs.get("splits") or {}).get("test")
    if not kinds or n_test is None:
        return None
    return pool_signature(kinds, n_test) == this_pool


def selected_on(theirs: Mapping[str, Any] | None) -> list[str]:
    """The out-of-distribution sets a bundle's run chose it on (report `selection.basis` "ood": the chosen
    configuration's sets); none for any other basis or without a report."""
    selection = (theirs or {}).get("selection") or {}
    if selection.get("basis") != "ood":
        return []
    return sorted((selection.get("chosen") or {}).get("ood_auroc") or {})


def compare_bundle(
    path: str | Path,
    acts: Activations,
    splits: Splits,
    fingerprint: str,
    this_run: Mapping[str, np.ndarray] | None = None,
    this_pool: Mapping[str, Any] | None = None,
) -> BundleComparison:
    """The bundle at `path` on this run's test split (and per kind) and out-of-distribution sets;
    `this_run`: the new probe's scores on the same sets ("test": the test split's rows, in order; an
    out-of-distribution set by name), for the paired change and its interval; `this_pool`: this run's
    `pool_signature`, which tells whether the test split is one the bundle never trained on."""
    from probewatch.probes import load_bundle
    from probewatch.probes.bundle import LINEAR_KINDS
    from probewatch.probes.errors import BundleError

    try:
        bundle = load_bundle(path, expected_fingerprint=fingerprint)
    except BundleError as exc:  # a missing, corrupt or foreign bundle is a comparison that did not happen
        return BundleComparison(str(path), skipped=f"cannot load: {exc}")
    m = bundle.manifest
    out = BundleComparison(str(path), m.id, list(m.all_layers), m.version, m.created_at)
    if m.kind not in LINEAR_KINDS:
        out.skipped = f"kind {m.kind!r} is not scored from cached rows"
        return out
    missing = [layer for layer in m.all_layers if layer not in acts.layers]
    if missing:
        out.skipped = f"layers {missing} are not in this run's activation cache (swept: {acts.layers})"
        return out
    view = MultiLayerActivations(acts, list(m.all_layers)) if len(m.all_layers) > 1 else acts
    pool_data, ood, _ = view.layer(m.all_layers[0])
    w, b = bundle.linear_form()
    weight = w.numpy().astype(np.float64)
    aggregation = m.aggregation

    def scores(data) -> np.ndarray:
        return score_all(weight, b, data, m.token_selection, [aggregation])[aggregation.method]

    this_run = this_run or {}

    def changed(name: str, before: np.ndarray, labels: np.ndarray) -> None:
        if name in this_run and (ci := paired_auroc_delta(before, np.asarray(this_run[name]), labels)) is not None:
            out.delta_ci[name] = ci

    pool = splits.pool
    s = scores(pool_data)
    test = pool.test_idx
    out.test_auroc = _auroc(s[test], pool.labels[test])
    theirs = bundle_report(path)
    out.test_same_split = _same_split(theirs, this_pool)
    out.selected_on = selected_on(theirs)
    if out.test_same_split:  # another pool's bundle may have trained on these rows: no paired change
        changed(TEST_SET, s[test], pool.labels[test])
    for kind in sorted(set(pool.kinds[test].tolist())):
        at = test[pool.kinds[test] == kind]
        if (v := _auroc(s[at], pool.labels[at])) is not None:
            out.test_per_kind[kind] = v
    for name, (data, labels) in ood.items():
        before = scores(data)
        if (v := _auroc(before, labels)) is not None:
            out.ood_auroc[name] = v
            changed(name, before, np.asarray(labels))
    return out
