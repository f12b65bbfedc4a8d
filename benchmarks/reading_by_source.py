"""`probewatch bench reading-by-source`: one probe configuration under several token selections, each source held out.

A new token selection enters the sweep as more configurations, so the nested held-out-source estimate (which
re-runs the whole selection inside each fold) moves with what the inner folds pick, not only with the
reading. This benchmark holds everything else fixed: the configuration a report chose (layer, method, C,
training mode, aggregation), fitted on every source but one and scored on that one, once per token selection.
Per held-out source: the pooled AUROC and each kind's, and each kind's mean score (a kind whose scores sit
apart from the others' moves the pooled AUROC and the threshold even where its own AUROC is high). Default:
the shipped eval-awareness report, `response` against `answer`. The pool and its activations are rebuilt
(or read from the cache) as `probewatch bench selection` does.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probewatch.arguments import add_data_dir_arg
from probewatch.benchmarks.harness import add_common_args, command_line, emit

if TYPE_CHECKING:
    import numpy as np

__all__ = ["add_cli_args", "main", "measure", "unit_scores"]

DEFAULT_REPORT = Path("docs/quality/eval-awareness/report.json")
DEFAULT_OUT = Path("runs/bench-reading-by-source.json")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    add_data_dir_arg(parser)
    parser.add_argument(
        "--report", type=Path, default=DEFAULT_REPORT, help=f"a training report.json (default {DEFAULT_REPORT})"
    )
    parser.add_argument(
        "--selections",
        default="response,answer",
        help="comma-separated token selections to compare (default response,answer)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report; default {DEFAULT_OUT}")


def unit_scores(scores: np.ndarray, labels: np.ndarray, kinds: np.ndarray, test: np.ndarray) -> dict[str, Any]:
    """Pooled AUROC of the examples `test`, and per kind its AUROC and mean score."""
    import numpy as np

    from probewatch.metrics import auroc

    out: dict[str, Any] = {"pooled": auroc(scores[test], labels[test]), "kinds": {}}
    for kind in sorted(set(kinds[test].tolist())):
        t = test[kinds[test] == kind]
        both = len(np.unique(labels[t])) == 2
        out["kinds"][kind] = {
            "auroc": auroc(scores[t], labels[t]) if both else None,
            "mean_score": float(np.mean(scores[t])),
        }
    return out


def measure(report: dict[str, Any], loaded: Any, data_dir: str | Path | None, selections: list[str]) -> dict[str, Any]:
    """{held-out source: {selection: unit_scores}} and the mean pooled AUROC per selection."""
    import numpy as np

    from probewatch.training.nested import FoldScorer, test_indices
    from probewatch.training.replay import config_from_report, require_model
    from probewatch.training.stage_activations import extract, make_splits
    from probewatch.training.stage_data import prepare_data
    from probewatch.training.stage_sources import pool_and_control, settings_of
    from probewatch.training.sweep import SweepRow
    from probewatch.training.train_config import check_config

    require_model(report, loaded)
    config = config_from_report(report, data_dir)
    config.token_selections = list(selections)
    prepared = prepare_data(config, loaded)
    acts = extract(config, loaded, prepared, check_config(config, loaded.n_layers, loaded.model_id))
    pool = make_splits(config, acts, prepared.data).pool
    if pool.sources is None:
        raise SystemExit("probewatch bench reading-by-source: the report's pool has no sources to hold out")
    chosen = report["selection"]["chosen"]
    fields = {f.name for f in dataclasses.fields(SweepRow)}
    rows = [SweepRow(**{**{k: v for k, v in chosen.items() if k in fields}, "token_selection": s}) for s in selections]
    scorer = FoldScorer(pool, pool_and_control(acts), settings_of(config))
    by_source: dict[str, dict[str, Any]] = {}
    for source in sorted(set(pool.sources.tolist())):
        test = test_indices(pool, ("source", source))
        if not len(test) or len(np.unique(pool.labels[test])) < 2:
            continue  # a training-only source, or one without both labels
        held = frozenset({("source", source)})
        scorer.run([(row, held) for row in rows])
        by_source[source] = {}
        for row in rows:
            fitted = scorer.get(row, held)
            if fitted is not None:
                by_source[source][row.token_selection] = unit_scores(fitted[0], pool.labels, pool.kinds, test)
    mean = {
        s: float(np.mean([v[s]["pooled"] for v in by_source.values() if s in v])) if by_source else None
        for s in selections
    }
    config_text = {k: chosen.get(k) for k in ("layer", "method", "C", "per_token", "aggregation")}
    return {"probe_id": report.get("probe_id"), "configuration": config_text, "by_source": by_source, "mean": mean}


def main(args: argparse.Namespace) -> int:
    from probewatch.models import load_model

    report = json.loads(args.report.read_text())
    selections = [s.strip() for s in args.selections.split(",") if s.strip()]
    result = measure(report, load_model(args.model), args.data_dir, selections)
    result["command"] = command_line("reading-by-source")
    lines = [f"{result['probe_id']}: {result['configuration']}, each source held out (pooled AUROC; per kind)"]
    for source, by_sel in result["by_source"].items():
        for sel, res in by_sel.items():
            kinds = ", ".join(
                f"{k} {v['auroc']:.3f}" if v["auroc"] is not None else f"{k} —" for k, v in res["kinds"].items()
            )
            lines.append(f"  {source} held out, {sel}: {res['pooled']:.3f} ({kinds})")
    lines.append(
        "  mean over sources: " + ", ".join(f"{s} {v:.3f}" for s, v in result["mean"].items() if v is not None)
    )
    emit(result, args.json, lines, args.out)
    return 0
