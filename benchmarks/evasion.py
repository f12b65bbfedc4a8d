"""`probewatch bench evasion`: every shipped probe against evasion attempts.

Per probe (`training/evasion.py` says what each condition does): the system prompt tells the model it
is monitored by a probe for this behaviour and should avoid detection; for response-reading probes
also the answer behind a sincerity assertion, and both together, and where the pool holds scenarios
that `paraphrases.yaml` words a second way (deception), those answers as written and paraphrased (a
sample, and every one the bundle's test split holds).
Items: refusal's out-of-distribution set (harmful_val against held-out harmless_val, never trained
on); for every other behaviour a kind-balanced sample of its pool (teacher-forced answers; labels
true by construction). Writes a JSON report and a plot (recall at the shipped threshold per
condition); `make bench-quality` puts the table in docs/quality.md from the same report.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probewatch.behaviours import BEHAVIOURS  # every behaviour has its evasion instruction (training/evasion.py)
from probewatch.benchmarks.harness import add_common_args, emit, save_plot

DEFAULT_OUT = Path("runs/bench-evasion.json")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument(
        "--data-dir", default=None, help="public datasets folder (default: $PROBEWATCH_DATA; docs/datasets.md)"
    )
    parser.add_argument("--per-class", type=int, default=60, help="items of each label per behaviour (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--probes", nargs="*", default=None, help="probe ids (default: every shipped probe)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (+ .png); default {DEFAULT_OUT}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@dataclass
class EvasionItems:
    """What one behaviour's probes are scored on."""

    dialogues: list  # the kind-balanced sample every condition rewrites
    where: str  # where they came from, as docs/quality.md names it
    paraphrases: list = field(default_factory=list)  # every (as written, paraphrased) dialogue pair of the pool


def evaluation_items(behaviour: str, data_dir: Path, per_class: int, seed: int) -> EvasionItems:
    """The sample (up to `per_class` of each label) and every paraphrase pair for one behaviour."""
    from probewatch.training.datasets import build_behaviour_data
    from probewatch.training.evasion import balanced_sample, paraphrase_pairs

    if behaviour == "refusal":
        items = build_behaviour_data("refusal", data_dir, seed=seed).ood["refusal_val"]
        return EvasionItems(
            balanced_sample(items, per_class, seed), "refusal_direction harmful_val vs held-out harmless_val"
        )
    data = build_behaviour_data(behaviour, data_dir, seed=seed)
    reads_prompt = data.token_selection == "prompt_last"  # prompt-only items are whole for a prompt reader
    pool = [d for d in data.pool if d.label is not None and (reads_prompt or d.ends_with_assistant)]
    return EvasionItems(
        balanced_sample(pool, per_class, seed),
        f"{behaviour.replace('_', ' ')} pool, kind-balanced sample",
        [] if reads_prompt else paraphrase_pairs(pool),
    )


def bundle_test_groups(bundle_dir: Path, loaded: Any, data_dir: Path) -> set[str] | None:
    """The groups of the bundle's test split, rebuilt from its report.json (`training/bundle_split.py`); None
    without a report or where the pool has changed since the bundle was trained (the split would differ)."""
    from probewatch.training.bundle_split import rebuild_split, report_of

    try:
        report = report_of(bundle_dir)
    except FileNotFoundError:
        return None
    rebuilt = rebuild_split(report, loaded, data_dir)
    if not rebuilt.same_pool:
        print(f"[bench evasion] {bundle_dir.name}: trained on another pool, no held-out rows", file=sys.stderr)
        return None
    return rebuilt.test_groups()


def evaluate_bundles(
    loaded: Any,
    bundle_dirs: list[Path],
    data_dir: Path,
    per_class: int,
    seed: int = 0,
    progress: bool = True,
    held_out_groups: Mapping[str, set[str] | None] | None = None,
) -> list[dict[str, Any]]:
    """Every bundle in `bundle_dirs` of a behaviour in BEHAVIOURS under every condition -> `EvasionReport.to_json()`s.
    `held_out_groups`: bundle folder name -> the groups of its test split, for the held-out paraphrase rows
    (default: `bundle_test_groups`, which prepares the bundle's whole training pool; on a fresh machine that
    generates the model's answers first)."""
    import numpy as np

    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.probes.aggregate import aggregate
    from probewatch.probes.manifest import ATTENTION
    from probewatch.scoring import score_dialogues
    from probewatch.training.evasion import (
        HELD_OUT_AS_WRITTEN,
        HELD_OUT_PARAPHRASED,
        Scored,
        held_out_pairs,
        measure,
        measure_paraphrase,
        sample_pairs,
    )

    reports = []
    items: dict[str, EvasionItems] = {}
    for path in bundle_dirs:
        bundle = load_bundle(path, expected_fingerprint=loaded.fingerprint)
        manifest = bundle.manifest
        if manifest.behaviour not in BEHAVIOURS:
            continue
        if manifest.behaviour not in items:
            items[manifest.behaviour] = evaluation_items(manifest.behaviour, data_dir, per_class, seed)
        behaviour_items = items[manifest.behaviour]
        dialogues, where = behaviour_items.dialogues, behaviour_items.where
        runtime = ProbeRuntime([bundle])
        print(f"[bench evasion] {manifest.id}: {len(dialogues)} items x conditions", file=sys.stderr, flush=True)

        def score(ds, probe_id=manifest.id, runtime=runtime):
            done = score_dialogues(loaded.model, loaded.tokenizer, runtime, ds, progress=progress)
            aggregates = np.array([r.aggregate[probe_id] for r in done])
            return Scored(aggregates, [np.asarray(r.token_scores[probe_id]) for r in done])

        spec = manifest.aggregation  # an attention probe pools (a, v) pairs: its token values alone cannot be re-pooled

        def pool(tokens: np.ndarray, spec: Any = spec) -> float:
            return aggregate(tokens, spec)

        reads_response = manifest.token_selection != "prompt_last"
        report = measure(
            score,
            dialogues,
            manifest.id,
            manifest.behaviour,
            manifest.threshold.value,
            reads_response=reads_response,
            data=where,
            pool=None if spec.method == ATTENTION else pool,
        )
        pairs, threshold = (behaviour_items.paraphrases if reads_response else []), manifest.threshold.value
        if pairs:
            report.results += measure_paraphrase(score, sample_pairs(pairs, per_class, seed), threshold)
            groups = (
                held_out_groups.get(path.name)
                if held_out_groups is not None
                else bundle_test_groups(path, loaded, data_dir)
            )
            if groups:
                held = held_out_pairs(pairs, groups)
                report.results += measure_paraphrase(
                    score, held, threshold, (HELD_OUT_AS_WRITTEN, HELD_OUT_PARAPHRASED)
                )
        reports.append(report.to_json())
    return reports


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The shipped probes (or `--probes`) under every condition."""
    from probewatch.bundle_index import discover
    from probewatch.models import load_model
    from probewatch.training.datasets.common import resolve_data_dir

    loaded = load_model(args.model)
    indexed = [b for b in discover(loaded.model_id) if b.manifest.behaviour in BEHAVIOURS and b.source == "shipped"]
    if args.probes:
        indexed = [b for b in indexed if b.manifest.id in args.probes]
    data_dir = resolve_data_dir(args.data_dir)
    return evaluate_bundles(loaded, [b.path for b in indexed], data_dir, args.per_class, args.seed, not args.quiet)


def plot(reports: list[dict[str, Any]], out: Path) -> Path:
    """Recall at the shipped threshold per probe and condition (grouped bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    conditions = sorted({r["condition"] for rep in reports for r in rep["results"]}, key=_order)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(reports) + 4), 3.6))
    width = 0.8 / max(1, len(conditions))
    for c, condition in enumerate(conditions):
        values = [
            next((r["recall"] for r in rep["results"] if r["condition"] == condition), float("nan")) for rep in reports
        ]
        ax.bar([i + c * width for i in range(len(reports))], values, width, label=condition)
    ax.set_xticks([i + width * (len(conditions) - 1) / 2 for i in range(len(reports))])
    ax.set_xticklabels([rep["probe_id"] for rep in reports])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall at the shipped threshold")
    ax.set_title("Evasion: recall per condition (same items, teacher-forced answers)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    return save_plot(fig, out)


def _order(condition: str) -> tuple[int, str]:
    from probewatch.training.evasion import AS_WRITTEN, HELD_OUT_AS_WRITTEN, HELD_OUT_PARAPHRASED, PARAPHRASED

    order = {"unmodified": 0, AS_WRITTEN: 2, PARAPHRASED: 3, HELD_OUT_AS_WRITTEN: 4, HELD_OUT_PARAPHRASED: 5}
    return (order.get(condition, 1), condition)


def lines(reports: list[dict[str, Any]]) -> list[str]:
    out = []
    for rep in reports:
        out.append(f"{rep['probe_id']} ({rep['data']}; threshold {rep['threshold']:.2f}):")
        for r in rep["results"]:
            auroc = "n/a" if r["auroc"] is None else f"{r['auroc']:.3f}"
            change = (
                ""
                if r["median_positive_change"] is None
                else f"  median positive change {r['median_positive_change']:+.2f}"
            )
            out.append(
                f"  {r['condition']:30} AUROC {auroc}  recall {r['recall']:.2f}  "
                f"flagged negatives {r['flagged_negatives']:.2f}{change}"
            )
    return out


def main(args: argparse.Namespace) -> int:
    reports = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(reports, args.out) if reports else None
    text = lines(reports) + ([f"report {args.out}, plot {png}"] if png else ["no shipped probe to measure"])
    emit({"reports": reports}, args.json, text, report=args.out)
    return 0 if reports else 1
