"""Linear probe estimators with the scikit-learn API (fit / decision_function / predict_proba).

All three share one score form, the one a bundle stores:

    score(x) = coef_ . ((x - mean_) / scale_) + intercept_      (mean_ = 0, scale_ = 1 unstandardised)

- `LogisticProbe`: standardised L2 logistic regression; C is chosen on grouped validation folds
  (StratifiedGroupKFold on `groups`, so no source item sits on both sides) by AUROC.
- `MeanDiffProbe`: the difference of class means (Arditi et al.'s refusal direction), as a unit
  vector, optionally in standardised space; bias at the midpoint of the class means.
- `LATProbe`: RepE's linear artificial tomography: first principal direction of paired
  differences (pairs = a positive and a negative of the same group, else random pairs), sign fixed
  on the training data so that positives score higher.

- `ContrastProbe`: logistic regression on contrast pairs: the +/- differences of a positive and a
  negative of the same group, no intercept. A pair shares its topic, format, length and source, so
  the difference keeps what separates the two answers of one situation. It scores lower inside a pool
  and separates behaviour from plain traffic less well than the logistic probe; on the deception pool
  the nested held-out-source estimate did not rise with it among the candidates (0.637 vs 0.628), so
  it is opt-in (`--method contrast`). Unpaired examples are paired at random.

`AttentionProbe` (training/attention_probe.py, bundle kind `attention`) reads token sequences, not
one row per example: a learned query weights the tokens, a value direction scores them.

Scores of MeanDiff/LAT are not probabilities until Platt-scaled (see `calibration.py`);
`predict_proba` is `sigmoid(decision_function)` for every probe so the API is uniform.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from probewatch.training.attention_probe import AttentionProbe

KIND_BY_METHOD = {
    "logistic": "linear",
    "mean_diff": "mean_diff",
    "lat": "lat",
    "contrast": "contrast",
    "attention": "attention",
}
#: methods whose probe is one direction scored per token then aggregated (the attention probe pools itself)
LINEAR_METHODS = ("logistic", "mean_diff", "lat", "contrast")
#: methods with a regularisation strength C (swept as a grid, or chosen by grouped CV)
C_METHODS = ("logistic", "contrast")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


class LinearProbe(ClassifierMixin, BaseEstimator):
    """Shared scoring, prediction and export for the linear probe family."""

    standardize: bool = False
    # set by fit
    coef_: np.ndarray
    intercept_: float

    # -- helpers for subclasses -----------------------------------------------------------------------
    def _prepare(self, X, y, sample_weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X, y = check_X_y(X, y, dtype=np.float64)
        classes = np.unique(y)
        if not np.array_equal(classes, [0, 1]):
            raise ValueError(f"probes are binary with labels 0/1; got classes {classes.tolist()}")
        self.classes_ = np.array([0, 1])
        self.n_features_in_ = X.shape[1]
        w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
        if self.standardize:
            mean = np.average(X, axis=0, weights=w)
            var = np.average((X - mean) ** 2, axis=0, weights=w)
            scale = np.sqrt(var)
            scale[scale < 1e-8] = 1.0
        else:
            mean, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        self.mean_, self.scale_ = mean, scale
        return (X - mean) / scale, y.astype(np.int64), w

    def _transform(self, X) -> np.ndarray:
        check_is_fitted(self, ("coef_", "intercept_"))
        X = validate_data(self, X, dtype=np.float64, reset=False)
        return (X - self.mean_) / self.scale_

    # -- sklearn API ---------------------------------------------------------------------------------------
    def decision_function(self, X) -> np.ndarray:
        return self._transform(X) @ self.coef_ + self.intercept_

    def predict_proba(self, X) -> np.ndarray:
        p = _sigmoid(self.decision_function(X))
        return np.column_stack([1.0 - p, p])

    def predict(self, X) -> np.ndarray:
        return self.classes_[(self.decision_function(X) > 0).astype(np.int64)]

    # -- export -----------------------------------------------------------------------------------------
    @property
    def direction_(self) -> np.ndarray:
        """Unit vector in raw residual space along which the score grows."""
        w = self.coef_ / self.scale_
        return w / np.linalg.norm(w)

    def raw_linear_form(self) -> tuple[np.ndarray, float]:
        """(w, b) with score = x . w + b in raw residual space."""
        w = self.coef_ / self.scale_
        return w, float(self.intercept_ - w @ self.mean_)

    def affine_(self, slope: float, offset: float) -> LinearProbe:
        """Fold score -> slope * score + offset into coef_/intercept_ (Platt scaling)."""
        self.coef_ = self.coef_ * slope
        self.intercept_ = float(self.intercept_ * slope + offset)
        return self


class LogisticProbe(LinearProbe):
    """Standardised logistic regression; `C=None` chooses C from `Cs` on grouped validation folds."""

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
        cv: int = 3,
        standardize: bool = True,
        class_weight: str | None = "balanced",
        max_iter: int = 2000,
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.standardize = standardize
        self.class_weight = class_weight
        self.max_iter = max_iter
        self.random_state = random_state

    def _model(self, C: float):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=C, class_weight=self.class_weight, max_iter=self.max_iter)

    def fit(self, X, y, groups=None, sample_weight=None) -> LogisticProbe:
        Xs, y, w = self._prepare(X, y, sample_weight)
        self.cv_auroc_: dict[float, float] = {}
        if self.C is None:
            self.C_ = self._select_C(Xs, y, w, groups)
        else:
            self.C_ = float(self.C)
        model = self._model(self.C_).fit(Xs, y, sample_weight=w)
        self.coef_ = model.coef_[0].astype(np.float64)
        self.intercept_ = float(model.intercept_[0])
        self.n_iter_ = int(np.max(model.n_iter_))
        return self

    def _select_C(self, Xs: np.ndarray, y: np.ndarray, w: np.ndarray, groups) -> float:
        def scores(C: float, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
            return self._model(C).fit(Xs[tr], y[tr], sample_weight=w[tr]).decision_function(Xs[va])

        return choose_C(self, y, groups, scores)


class MeanDiffProbe(LinearProbe):
    """Difference of class means; unit-norm direction (Arditi-style), bias at the class midpoint."""

    def __init__(self, standardize: bool = False, normalize: bool = True) -> None:
        self.standardize = standardize
        self.normalize = normalize

    def fit(self, X, y, groups=None, sample_weight=None) -> MeanDiffProbe:
        Xs, y, w = self._prepare(X, y, sample_weight)
        mu1 = np.average(Xs[y == 1], axis=0, weights=w[y == 1])
        mu0 = np.average(Xs[y == 0], axis=0, weights=w[y == 0])
        diff = mu1 - mu0
        norm = np.linalg.norm(diff)
        if norm == 0:
            raise ValueError("class means coincide: no mean-difference direction")
        self.coef_ = diff / norm if self.normalize else diff
        self.intercept_ = float(-self.coef_ @ (mu1 + mu0) / 2.0)
        return self


class LATProbe(LinearProbe):
    """First principal direction of paired differences (RepE LAT), sign fixed on train data."""

    def __init__(self, standardize: bool = False, random_state: int = 0) -> None:
        self.standardize = standardize
        self.random_state = random_state

    def fit(self, X, y, groups=None, sample_weight=None) -> LATProbe:
        Xs, y, w = self._prepare(X, y, sample_weight)
        rng = np.random.default_rng(self.random_state)
        diffs, weights = paired_differences(Xs, y, w, groups, rng)
        signs = rng.choice([-1.0, 1.0], size=len(diffs))  # RepE: random order within a pair
        D = diffs * signs[:, None]
        D = (D - np.average(D, axis=0, weights=weights)) * np.sqrt(weights)[:, None]
        _, _, vt = np.linalg.svd(D, full_matrices=False)
        v = vt[0]
        m1, m0 = _class_means(Xs @ v, y, w)
        if m1 < m0:
            v, m1, m0 = -v, -m1, -m0
        self.coef_ = v
        self.intercept_ = float(-(m1 + m0) / 2.0)
        self.n_pairs_ = len(diffs)
        return self


class ContrastProbe(LinearProbe):
    """Logistic regression without intercept on +/- (positive - negative) pair differences.

    `C=None` chooses C from `Cs` on grouped validation folds, scoring each fold's held-out examples
    (not pairs) by AUROC. The bias puts the midpoint of the class means at 0 (Platt scaling refits it).
    """

    def __init__(
        self,
        C: float | None = None,
        Cs: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
        cv: int = 3,
        standardize: bool = True,
        max_iter: int = 2000,
        random_state: int = 0,
    ) -> None:
        self.C = C
        self.Cs = Cs
        self.cv = cv
        self.standardize = standardize
        self.max_iter = max_iter
        self.random_state = random_state

    def _pairs(self, Xs: np.ndarray, y: np.ndarray, w: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
        """The pair differences and their weights (random pairing seeded by `random_state`: the same per call)."""
        return paired_differences(Xs, y, w, groups, np.random.default_rng(self.random_state))

    def _direction(self, diffs: np.ndarray, weights: np.ndarray, C: float) -> np.ndarray:
        from sklearn.linear_model import LogisticRegression

        model = LogisticRegression(C=C, fit_intercept=False, max_iter=self.max_iter)
        model.fit(
            np.vstack([diffs, -diffs]),
            np.r_[np.ones(len(diffs)), np.zeros(len(diffs))],
            sample_weight=np.r_[weights, weights],
        )
        return model.coef_[0].astype(np.float64)

    def fit(self, X, y, groups=None, sample_weight=None) -> ContrastProbe:
        Xs, y, w = self._prepare(X, y, sample_weight)
        self.cv_auroc_: dict[float, float] = {}
        self.C_ = float(self.C) if self.C is not None else self._select_C(Xs, y, w, groups)
        self.coef_ = self._direction(*self._pairs(Xs, y, w, groups), self.C_)
        m1, m0 = _class_means(Xs @ self.coef_, y, w)
        self.intercept_ = float(-(m1 + m0) / 2.0)
        return self

    def _select_C(self, Xs: np.ndarray, y: np.ndarray, w: np.ndarray, groups) -> float:
        g = None if groups is None else np.asarray(groups)
        pairs: dict[bytes, tuple[np.ndarray, np.ndarray]] = {}  # per fold: the pairs do not depend on C

        def scores(C: float, tr: np.ndarray, va: np.ndarray) -> np.ndarray:
            key = tr.tobytes()
            if key not in pairs:
                pairs[key] = self._pairs(Xs[tr], y[tr], w[tr], None if g is None else g[tr])
            return Xs[va] @ self._direction(*pairs[key], C)

        return choose_C(self, y, groups, scores)


def choose_C(probe: LogisticProbe | ContrastProbe, y: np.ndarray, groups, scores) -> float:
    """C from `probe.Cs` by mean AUROC on grouped validation folds (`scores(C, train, validation)` gives the
    validation scores), recorded in `probe.cv_auroc_`: the most regularised C within 0.001 of the best, since
    simpler directions transfer better. Without usable folds, the middle of the grid."""
    from sklearn.metrics import roc_auc_score

    folds = list(validation_folds(y, groups, probe.cv, probe.random_state))
    if not folds:
        return float(probe.Cs[len(probe.Cs) // 2])
    for C in probe.Cs:
        probe.cv_auroc_[float(C)] = float(np.mean([roc_auc_score(y[va], scores(C, tr, va)) for tr, va in folds]))
    best = max(probe.cv_auroc_.values())
    return min(C for C, s in probe.cv_auroc_.items() if s >= best - 1e-3)


def _class_means(proj: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted mean projection of the positives and of the negatives (a pair-difference probe's bias sits
    at their midpoint)."""
    return float(np.average(proj[y == 1], weights=w[y == 1])), float(np.average(proj[y == 0], weights=w[y == 0]))


def paired_differences(
    X: np.ndarray, y: np.ndarray, w: np.ndarray, groups, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """positive-minus-negative differences: within groups holding both labels, else random pairs."""
    diffs: list[np.ndarray] = []
    weights: list[float] = []
    unpaired_pos: list[int] = []
    unpaired_neg: list[int] = []
    if groups is not None:
        groups = np.asarray(groups)
        _, inverse = np.unique(groups, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.flatnonzero(np.diff(inverse[order])) + 1
        for members in np.split(order, bounds):
            pos, neg = members[y[members] == 1], members[y[members] == 0]
            if len(pos) and len(neg):
                diffs.append(np.average(X[pos], axis=0, weights=w[pos]) - np.average(X[neg], axis=0, weights=w[neg]))
                weights.append(float(w[pos].mean() + w[neg].mean()) / 2.0)
            else:
                unpaired_pos.extend(pos.tolist())
                unpaired_neg.extend(neg.tolist())
    else:
        unpaired_pos = np.flatnonzero(y == 1).tolist()
        unpaired_neg = np.flatnonzero(y == 0).tolist()
    n = min(len(unpaired_pos), len(unpaired_neg))
    if n:
        pos = rng.permutation(unpaired_pos)[:n]
        neg = rng.permutation(unpaired_neg)[:n]
        diffs.extend(X[pos] - X[neg])
        weights.extend(((w[pos] + w[neg]) / 2.0).tolist())
    if len(diffs) < 2:
        raise ValueError("pair-difference probes (lat, contrast) need at least two positive/negative pairs")
    return np.asarray(diffs), np.asarray(weights)


def validation_folds(y: np.ndarray, groups, n_splits: int, seed: int):
    """Grouped, stratified folds whose validation side holds both classes (none if impossible)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if groups is None:
        n = min(n_splits, int(np.bincount(y).min()))
        if n < 2:
            return
        yield from StratifiedKFold(n, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)
        return
    groups = np.asarray(groups)
    n = min(n_splits, len(np.unique(groups)))
    if n < 2:
        return
    for tr, va in StratifiedGroupKFold(n, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups):
        if len(np.unique(y[va])) == 2 and len(np.unique(y[tr])) == 2:
            yield tr, va


def make_probe(method: str, seed: int = 0, C: float | None = None, standardize: bool | None = None) -> LinearProbe:
    """Linear estimator for a method name: logistic | mean_diff | lat | contrast (`attention`: `make_attention_probe`)."""
    if method == "logistic":
        return LogisticProbe(C=C, random_state=seed, standardize=True if standardize is None else standardize)
    if method == "mean_diff":
        return MeanDiffProbe(standardize=bool(standardize))
    if method == "lat":
        return LATProbe(standardize=bool(standardize), random_state=seed)
    if method == "contrast":
        return ContrastProbe(C=C, random_state=seed, standardize=True if standardize is None else standardize)
    if method == "attention":
        raise ValueError("the attention probe is fitted on token sequences: use make_attention_probe")
    raise ValueError(f"unknown method {method!r}; known: {', '.join(KIND_BY_METHOD)}")


def make_attention_probe(seed: int = 0, **params) -> AttentionProbe:
    """The attention-pooling estimator (training/attention_probe.py): fit(X_tokens, y, offsets=..., groups=...)."""
    return AttentionProbe(random_state=seed, **params)
