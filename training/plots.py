"""The matplotlib plots written next to a trained bundle (and copied into docs/quality/<id>/).

Plots: `auroc_by_layer.png` (validation and held-out-kind AUROC per layer for each method at the
chosen aggregation), `roc.png` (test split and out-of-distribution sets, with the control
threshold's operating point), `score_hist.png` (positives / negatives / control with the
threshold), `operating_points.png` (per kind, at the shipped threshold). Matplotlib runs headless (Agg).
`layer_view` is the layer sweep as the plot and docs/quality.md's layer table show it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from probewatch.training.report import OperatingSummary

PLOTS = ("auroc_by_layer.png", "roc.png", "score_hist.png", "operating_points.png")


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def sweep_mode(rows: list[dict], chosen: dict) -> bool:
    """per_token value of the layer sweep (the per-token variant is often tried on the best layer only)."""
    layers = {
        pt: {r["layer"] for r in rows if r["per_token"] == pt and r["token_selection"] == chosen["token_selection"]}
        for pt in (False, True)
    }
    return max((False, True), key=lambda pt: (len(layers[pt]), pt == chosen["per_token"]))


def _row_score(r: dict) -> float:
    for key in ("heldout_kind_auroc", "ood_mean", "val_auroc"):
        if r.get(key) is not None:
            return float(r[key])
    return -1.0


def layer_view(rows: list[dict], chosen: dict) -> dict[tuple[int, str], dict]:
    """{(layer, method): row} of the layer sweep at the chosen token selection, aggregation and
    training mode; where C was swept, the row of the best C (held-out kind, else OOD, else validation)."""
    mode = sweep_mode(rows, chosen)
    out: dict[tuple[int, str], dict] = {}
    for r in rows:
        if (
            r["aggregation"] != chosen["aggregation"]
            or r["token_selection"] != chosen["token_selection"]
            or r["per_token"] != mode
        ):
            continue
        key = (r["layer"], r["method"])
        if key not in out or _row_score(r) > _row_score(out[key]):
            out[key] = r
    return out


def plot_layer_sweep(rows: list[dict], chosen: dict, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    view = layer_view(rows, chosen)
    for method in sorted({m for _, m in view}):
        pts = sorted(((layer, r) for (layer, m), r in view.items() if m == method), key=lambda t: t[0])
        layers = [layer for layer, _ in pts]
        ax.plot(layers, [r["val_auroc"] for _, r in pts], marker="o", label=f"{method}: validation")
        if any(r["heldout_kind_auroc"] is not None for _, r in pts):
            ax.plot(
                layers,
                [r["heldout_kind_auroc"] for _, r in pts],
                marker="s",
                linestyle="--",
                label=f"{method}: held-out kinds",
            )
        elif any(r.get("ood_mean") is not None for _, r in pts):
            ax.plot(
                layers,
                [r["ood_mean"] for _, r in pts],
                marker="s",
                linestyle="--",
                label=f"{method}: out-of-distribution",
            )
    ax.axvline(chosen["layer"], color="grey", linewidth=0.8)
    ax.set_xlabel("layer (resid_post)")
    ax.set_ylabel("AUROC")
    ax.set_ylim(0.4, 1.01)
    return _finish(plt, fig, ax, path, title, legend_loc="lower right", grid=True)


def plot_roc(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: Path,
    title: str,
    operating_points: dict[str, tuple[float, float]] | None = None,
) -> Path:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 5))
    for name, (scores, labels) in curves.items():
        if len(np.unique(labels)) < 2:
            continue
        fpr, tpr, _ = roc_curve(labels, scores)
        ax.plot(fpr, tpr, label=name)
    for name, (x, y) in (operating_points or {}).items():
        ax.plot([x], [y], marker="x", markersize=9, linestyle="none", label=name)
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.6, linestyle=":")
    ax.set_xlabel("false-positive rate")
    ax.set_ylabel("true-positive rate")
    return _finish(plt, fig, ax, path, title, legend_loc="lower right", grid=True)


def plot_histograms(groups: dict[str, np.ndarray], threshold: float, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    finite = np.concatenate([g[np.isfinite(g)] for g in groups.values() if len(g)])
    bins = np.linspace(np.percentile(finite, 0.5), np.percentile(finite, 99.5), 50)
    for name, values in groups.items():
        if len(values):
            ax.hist(
                np.clip(values, bins[0], bins[-1]),
                bins=bins,
                alpha=0.5,
                density=True,
                label=f"{name} (n={len(values)})",
            )
    ax.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.2f}")
    ax.set_xlabel("score (calibrated logit)")
    ax.set_ylabel("density")
    return _finish(plt, fig, ax, path, title)


def _finish(plt, fig, ax, path: Path, title: str, legend_loc: str = "best", grid: bool = False) -> Path:
    """Title, legend, (grid), save at one resolution and free the figure: every report plot ends alike."""
    ax.set_title(title)
    ax.legend(fontsize=7, loc=legend_loc)
    if grid:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_operating_points(op: OperatingSummary, path: Path, title: str) -> Path:
    """At the shipped threshold: per test kind, recall and the FPR on its negatives (the second
    operating point); per control kind, the realised FPR on the held-out control half."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    kinds = list(op.per_kind)
    x = np.arange(len(kinds))
    fpr = [op.per_kind[k].fpr_negatives or 0.0 for k in kinds]
    rec = [op.per_kind[k].recall or 0.0 for k in kinds]
    ax1.bar(x - 0.2, rec, 0.4, label="recall (test positives)")
    ax1.bar(x + 0.2, fpr, 0.4, label="flagged negatives (test)")
    if op.hard_negative_fpr_target is not None:
        ax1.axhline(op.hard_negative_fpr_target, color="black", linestyle="--", linewidth=0.8, label="negatives target")
    ax1.set_xticks(x, kinds, rotation=60, ha="right", fontsize=7)
    ax1.set_ylim(0, 1.02)
    ax1.set_title("behaviour data (test split)", fontsize=9)
    ax1.legend(fontsize=7)
    ckinds = list(op.control_per_kind)
    ax2.bar(np.arange(len(ckinds)), [op.control_per_kind[k].fpr for k in ckinds], color="tab:red")
    ax2.axhline(op.fpr_target, color="black", linestyle="--", linewidth=0.8, label=f"{100 * op.fpr_target:g}% target")
    ax2.set_xticks(np.arange(len(ckinds)), ckinds, rotation=45, ha="right", fontsize=7)
    ax2.set_title("control set, held-out half: flagged", fontsize=9)
    ax2.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
