"""report.json and matplotlib plots written next to a trained bundle.

Plots: `auroc_by_layer.png` (validation and held-out-kind AUROC per layer for each method at the
chosen aggregation), `roc.png` (test split and out-of-distribution sets, with the control
threshold's operating point), `score_hist.png` (positives / negatives / control with the
threshold). Matplotlib runs headless (Agg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from probewatch.jsonio import write_json_atomic

PLOTS = ("auroc_by_layer.png", "roc.png", "score_hist.png")


def write_json(path: Path, obj: Any) -> Path:
    return write_json_atomic(path, obj, indent=2)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_sweep(rows: list[dict], chosen: dict, path: Path, title: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    from probewatch.training.bench_quality import sweep_mode

    mode = sweep_mode(rows, chosen)
    subset = [
        r
        for r in rows
        if r["aggregation"] == chosen["aggregation"]
        and r["token_selection"] == chosen["token_selection"]
        and r["per_token"] == mode
    ]
    for method in sorted({r["method"] for r in subset}):
        pts = sorted((r["layer"], r) for r in subset if r["method"] == method)
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
