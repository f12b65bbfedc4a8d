"""`probewatch bench augmentation`: does an `--augment` kind of copy keep a probe's score under conditions it never saw?

The behaviour's training pool (or `--data` files) without copies, split by group (test 20%). At each
`--layers` layer one logistic probe (response tokens, mean, `--C`) is fitted on the fit split, and
one on the fit split plus its copies (`--augment`: `sincerity` answers behind an assertion, `monitoring`
a watcher named in the system prompt, `paraphrase` a scenario answer in its second wording;
`training/augment.py`, `--share`); `--base` gives both probes another
augmentation's copies first, as the shipped probe has them. `--concat` adds the pair on the layers'
concatenated features, the shape of a shipped multi-layer probe. Both are scored on the test split clean
and under each held-out condition of the augmentation (and of `--base`) (`training/augment_effect.py`; a
condition that has no version of an item, such as an answer without a paraphrase, is scored on the
items it has): AUROC, recall
and flagged negatives at the threshold that flags 5% of the clean test negatives, and the positives'
median score change. Long-transcript kinds are skipped by default (`--skip-kinds`): an assertion of a
dozen tokens hardly moves a mean over thousands. Writes a JSON report and a plot (recall and flagged
negatives per condition, plain vs augmented, per layer).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from probewatch.arguments import add_data_dir_arg, layer_list
from probewatch.benchmarks.harness import add_common_args, command_line, emit, save_plot

DEFAULT_OUT = Path("runs/bench-augmentation.json")
LONG_KINDS = ("long_transcript", "long_generated", "af_long")
#: `training/augment.py`'s `AUGMENTATIONS` by name (a test pins them equal): that module imports numpy, which
#: the CLI's argument parsing does not load
AUGMENTATION_NAMES = ("sincerity", "monitoring", "paraphrase")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    add_data_dir_arg(parser)
    parser.add_argument("--behaviour", default="deception", help="built-in pool to measure (default deception)")
    parser.add_argument(
        "--augment",
        default="sincerity",
        choices=AUGMENTATION_NAMES,
        help="the copies to measure (default sincerity; training/augment.py)",
    )
    parser.add_argument(
        "--base",
        default=None,
        choices=AUGMENTATION_NAMES,
        help="copies both probes are fitted with, as a shipped probe would be (e.g. sincerity for deception); "
        "their held-out conditions are scored too",
    )
    parser.add_argument(
        "--data", type=Path, action="append", default=[], help="a labelled dialogue JSONL instead (repeatable)"
    )
    parser.add_argument("--layers", type=layer_list, default=[15, 19, 21], help="layers (default 15,19,21)")
    parser.add_argument(
        "--concat",
        action="store_true",
        help="also one probe on the layers' concatenated features (the shape of a shipped multi-layer probe)",
    )
    parser.add_argument("--C", type=float, default=0.01, help="logistic regularisation (default 0.01)")
    parser.add_argument(
        "--share",
        type=float,
        default=None,
        help="share of answers the measured augmentation copies (default: the trainer's; --base copies always get it)",
    )
    parser.add_argument(
        "--skip-kinds",
        default=",".join(LONG_KINDS),
        help=f"comma-separated kinds left out (default {','.join(LONG_KINDS)}; '' keeps all)",
    )
    parser.add_argument("--max-tokens", type=int, default=512, help="keep the last N tokens of a dialogue")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report (+ .png); default {DEFAULT_OUT}")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _items(args: argparse.Namespace, loaded: Any) -> list:
    """The pool's labelled answers (no copies), minus `--skip-kinds`."""
    from probewatch.training.stage_data import pool_data
    from probewatch.training.train_config import TrainConfig

    config = TrainConfig(
        behaviour=args.behaviour,
        data_dir=args.data_dir,
        data_files=list(args.data),
        augment=(),
        progress=not args.quiet,
    )
    skip = {k for k in args.skip_kinds.split(",") if k}
    pool = pool_data(config, loaded).pool
    return [d for d in pool if d.label is not None and d.ends_with_assistant and d.kind not in skip]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np

    from probewatch.models import load_model
    from probewatch.training.augment import AUGMENTATIONS, share_of
    from probewatch.training.augment_effect import effect_rows, held_out_conditions
    from probewatch.training.extract import extract_activations
    from probewatch.training.features import LayerData
    from probewatch.training.splits import grouped_split

    if args.base == args.augment:
        raise SystemExit(f"--base {args.base} is the augmentation measured; pick another --augment")
    loaded = load_model(args.model)
    share = share_of(args.augment) if args.share is None else args.share
    items = _items(args, loaded)
    labels = np.array([d.label for d in items])
    groups = np.array([d.group for d in items])
    fit_idx, test_idx = grouped_split(groups, labels, 0.2, seed=args.seed)
    fit = [items[i] for i in fit_idx]
    test = [items[i] for i in test_idx]
    behaviour = None if args.data else args.behaviour
    base = AUGMENTATIONS[args.base](fit, share_of(args.base), args.seed) if args.base else []  # as the trainer does
    copies = AUGMENTATIONS[args.augment](fit, share, args.seed)
    if not copies:
        raise SystemExit(f"no fit item of this pool gets a {args.augment} copy: nothing to measure")
    held_out = held_out_conditions(args.base, behaviour) if args.base else {}
    held_out |= held_out_conditions(args.augment, behaviour)
    fit_set = fit + base  # both probes see the base copies; only the augmented one also `copies`
    sets = {"fit": fit_set, "copies": copies, "test": test}
    index: dict[str, Any] = {}  # condition -> the test items it has a version of
    unchanged: list[str] = []  # conditions that keep those items as they are: their rows are the test's own
    for name, (_, rewrite) in list(held_out.items()):
        kept = [(i, r) for i, d in enumerate(test) if (r := rewrite(d)) is not None]
        if not kept:  # e.g. no test answer has a paraphrase
            del held_out[name]
            continue
        index[name] = np.array([i for i, _ in kept], dtype=int)
        if all(r is test[i] for i, r in kept):
            unchanged.append(name)
        else:
            sets[f"test-{name}"] = [r for _, r in kept]

    means: dict[str, dict[int, Any]] = {}
    for name, dialogues in sets.items():
        acts = extract_activations(
            loaded.model,
            loaded.tokenizer,
            dialogues,
            args.layers,
            loaded.fingerprint,
            name=f"bench-augmentation-{name}",
            max_tokens=args.max_tokens,
            progress=not args.quiet,
        )
        means[name] = {layer: LayerData.load(acts, layer).means for layer in args.layers}
    for name in unchanged:
        means[f"test-{name}"] = {layer: means["test"][layer][index[name]] for layer in args.layers}

    def arrays(dialogues: list) -> tuple[Any, Any]:
        return np.array([d.label for d in dialogues]), np.array([d.group for d in dialogues])

    probes = [[layer] for layer in args.layers] + ([list(args.layers)] if args.concat and len(args.layers) > 1 else [])
    rows = []
    for layers in probes:
        label = "+".join(map(str, layers))

        def features(name: str, layers: list[int] = layers) -> Any:
            return np.hstack([means[name][layer] for layer in layers])

        print(f"[bench augmentation] layers {label}: fitting plain and augmented", file=sys.stderr, flush=True)
        rows += effect_rows(
            label,
            (features("fit"), *arrays(fit_set)),
            (features("copies"), *arrays(copies)),
            (features("test"), arrays(test)[0]),
            {name: (features(f"test-{name}"), index[name]) for name in held_out},
            C=args.C,
        )
    return {
        "command": command_line("augmentation"),
        "behaviour": args.behaviour if not args.data else None,
        "data": [str(p) for p in args.data],
        "model": loaded.model_id,
        "augment": args.augment,
        "base": args.base,
        "share": share,
        "n_fit": len(fit_set),
        "n_base_copies": len(base),
        "n_copies": len(copies),
        "n_test": len(test),
        "held_out": {name: text for name, (text, _) in held_out.items()},
        "rows": [r.to_json() for r in rows],
    }


def plot(result: dict[str, Any], out: Path) -> Path:
    """Recall (bars) and flagged negatives (dots) at the 5%-of-clean-negatives threshold per held-out condition:
    plain vs augmented, per layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["clean", *result["held_out"]]
    layers = list(dict.fromkeys(r["layers"] for r in result["rows"]))
    fig, axes = plt.subplots(1, len(layers), figsize=(3.6 * len(layers), 3.8), sharey=True, squeeze=False)
    styles = {"plain": ("#9ecae1", "#08519c"), "augmented": ("#fdae6b", "#a63603")}  # (bar, dot): light, dark
    for ax, layer in zip(axes[0], layers):
        for k, (training, (bar_colour, dot_colour)) in enumerate(styles.items()):
            row = next(r for r in result["rows"] if r["layers"] == layer and r["training"] == training)
            conditions = [row["clean"]] + [row["results"][n] for n in names[1:]]
            xs = [i + 0.4 * k for i in range(len(names))]
            ax.bar(xs, [c["recall"] for c in conditions], 0.4, color=bar_colour, label=f"{training}: recall")
            flagged = [c["flagged_negatives"] for c in conditions]
            ax.plot(xs, flagged, "D", color=dot_colour, markersize=6, label=f"{training}: flagged negatives")
        ax.set_xticks([i + 0.2 for i in range(len(names))])
        ax.set_xticklabels(names, fontsize=8)
        ax.set_title(f"layer {layer}" if "+" not in layer else f"layers {layer}")
        ax.set_ylim(0, 1.05)
    axes[0][0].set_ylabel("share at 5%-of-clean-neg. threshold", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
    base = f"; both probes with {result['base']} copies" if result["base"] else ""
    fig.suptitle(
        f"{result['augment'].capitalize()} copies: recall (bars) and flagged negatives (diamonds) under held-out "
        f"conditions{base}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return save_plot(fig, out)


def lines(result: dict[str, Any]) -> list[str]:
    base = f" (fit includes {result['n_base_copies']} {result['base']} copies)" if result["base"] else ""
    out = [
        f"{result['behaviour'] or ', '.join(result['data'])}: fit {result['n_fit']}{base} + {result['n_copies']} "
        f"{result['augment']} copies (share {result['share']:g}), test {result['n_test']}; recall / flagged negatives at the threshold "
        "flagging 5% of the clean test negatives"
    ]
    for r in result["rows"]:
        cells = "  ".join(
            f"{name} {v['auroc']:.3f} {v['recall']:.2f}/{v['flagged_negatives']:.2f} ({v['median_positive_change']:+.2f})"
            for name, v in r["results"].items()
        )
        out.append(
            f"  L{r['layers']:<8} {r['training']:9} C={r['C']:g} clean {r['clean']['auroc']:.3f} {r['clean']['recall']:.2f}  {cells}"
        )
    return out


def main(args: argparse.Namespace) -> int:
    result = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    png = plot(result, args.out)
    emit(result, args.json, [*lines(result), f"report {args.out}, plot {png}"], report=args.out)
    return 0
