"""`probewatch train`: train (and export) a probe bundle for one behaviour.

With no flags but `--behaviour`, the built-in data for that behaviour is read from `--data-dir`
(default $PROBEWATCH_DATA); everything else (model, layers, method, aggregation, FPR, output) can
be overridden. `--init-from BUNDLE` retrains an existing bundle with its settings and refuses a
model whose fingerprint differs from the bundle's.
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from probewatch.arguments import (
    add_data_dir_arg,
    add_extra_data_arg,
    add_json_arg,
    add_model_arg,
    layer_list,
    print_json,
)
from probewatch.behaviours import BEHAVIOURS

METHODS = ("logistic", "mean_diff", "lat", "contrast", "attention")
# = probewatch.probes.manifest.AGGREGATIONS (a test holds them equal; importing it here would load torch)
AGGREGATIONS = ("mean", "max", "last", "ema", "rolling_mean_max", "softmax", "max_norm", "rolling_mean_max_norm")
# = probewatch.training.report_sources.VAL_MARGIN, the held-out-source choice's guard (a test holds them equal)
SELECTION_MARGIN = 0.10
# = probewatch.training.train_config.HELDOUT_CS, the C values the held-out-kind sweep tries (a test holds them equal)
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def _optional_rate(value: str) -> float | None:
    if value.lower() in ("none", "off"):
        return None
    try:
        rate = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1) or 'none', got {value!r}") from None
    if not 0.0 <= rate < 1.0:
        raise argparse.ArgumentTypeError(f"expected a rate in [0, 1) or 'none', got {value!r}")
    return rate


def _c_grid(value: str) -> tuple[float, ...]:
    """'1e-3,0.01,0.1,1' -> (0.001, 0.01, 0.1, 1.0); every value a positive finite number."""
    try:
        grid = tuple(float(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers such as 1e-3,0.01,0.1, got {value!r}"
        ) from None
    if not grid or not all(math.isfinite(c) and c > 0 for c in grid):
        raise argparse.ArgumentTypeError(f"C values must be positive finite numbers, got {value!r}")
    return tuple(sorted(set(grid)))


def _name_list(choices: tuple[str, ...]):
    def parse(value: str) -> list[str]:
        if value == "auto":
            return []
        names = [v.strip() for v in value.split(",") if v.strip()]
        bad = [n for n in names if n not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(bad)}; choose from {', '.join(choices)} or 'auto'")
        return names

    return parse


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--behaviour",
        "--behavior",
        choices=BEHAVIOURS,
        default=None,
        help="behaviour to train (required unless --init-from names a bundle)",
    )
    add_model_arg(parser)
    add_data_dir_arg(parser)
    parser.add_argument(
        "--data",
        type=Path,
        nargs="+",
        default=None,
        help="train on these dialogue JSONL files instead of the built-in data (labels required)",
    )
    parser.add_argument(
        "--ood", type=Path, nargs="+", default=[], help="extra out-of-distribution JSONL sets to report"
    )
    add_extra_data_arg(
        parser,
        "labelled dialogues added to the training pool, e.g. reviewed incidents "
        "(`probewatch incidents export --labelled`; lines about other behaviours are left out)",
    )
    parser.add_argument(
        "--control",
        type=Path,
        default=None,
        help="control JSONL for the threshold (default: harmless_val with the model's own responses)",
    )
    parser.add_argument(
        "--layers",
        type=layer_list,
        default=None,
        help="layers to sweep: '9', '3,9,15' or '4-12' (default: every other layer)",
    )
    parser.add_argument(
        "--method",
        type=_name_list(METHODS),
        default=[],
        help="logistic, mean_diff, lat, attention (attention pooling with a learned query, tried on the best "
        "response layer), contrast (logistic regression on positive-minus-negative pair differences; opt-in: "
        "it scores lower inside a pool, so judge it on a pool with several sources), "
        "a comma list, or auto (default: all but contrast)",
    )
    parser.add_argument(
        "--aggregation",
        type=_name_list(AGGREGATIONS),
        default=[],
        help="per-generation aggregation(s) to compare (default: per behaviour)",
    )
    parser.add_argument(
        "--token-selection",
        type=_name_list(("response", "prompt_last", "all", "answer")),
        default=[],
        help=(
            "response, prompt_last, all (prompt + response; mean aggregation) and/or answer (the option a "
            "multiple-choice reply names, else the reply) (default: per behaviour)"
        ),
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--per-token",
        dest="per_token",
        action="store_const",
        const=True,
        default=None,
        help="fit on every response token (default: per-example, per-token tried on the best config)",
    )
    group.add_argument(
        "--per-example",
        dest="per_token",
        action="store_const",
        const=False,
        help="fit on each example's mean response row only",
    )
    parser.add_argument(
        "--standardize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="standardise inputs (default: yes for logistic, no for mean_diff/lat)",
    )
    parser.add_argument("--fpr", type=float, default=0.01, help="false-positive rate for the threshold (default 0.01)")
    parser.add_argument(
        "--hard-negative-fpr",
        type=_optional_rate,
        default=0.2,
        help="second operating point: the threshold also flags at most this share of the behaviour's own "
        "calibration negatives (honest answers in deception-laden contexts, ...); 'none' = control set only "
        "(default 0.2)",
    )
    parser.add_argument(
        "--transfer-threshold",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with two or more data sources, raise the threshold to the share of calibration negatives that the "
        "nested held-out-source estimate found keeps each held-out source's negatives at --hard-negative-fpr "
        "(default: yes)",
    )
    parser.add_argument(
        "--hard-negatives-per-kind",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the --hard-negative-fpr limit also holds for each kind with 5+ calibration negatives, not only "
        "for all of them pooled (default: yes)",
    )
    parser.add_argument(
        "--family",
        action="store_true",
        help="also train a family: one probe per deception type (training/family.py), each Platt-calibrated, "
        "alerting on their maximum; written to <out>-family (family.json + member bundles) with family_report.json",
    )
    parser.add_argument(
        "--uncertainty-band",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="ship an uncertainty band below the threshold where one threshold cannot hold both aims: from the "
        "control threshold up to a threshold --hard-negative-fpr raised, or, where the threshold keeps under half "
        "of the calibration positives, from where half are kept (at most --band-control-fpr of the control set); "
        "scores there are recorded as uncertain (low-priority incidents), never alerted (default: yes)",
    )
    parser.add_argument(
        "--band-control-fpr",
        type=float,
        default=0.05,
        help="the most of the control set a recall band may record as uncertain: review load (default: 0.05)",
    )
    parser.add_argument(
        "--multi-layer",
        type=int,
        default=3,
        help="multi-layer probe: a forward search from the chosen layer adds up to N-1 layers whose concatenation "
        "scores best on held-out kinds; shipped only where it clearly beats one layer (0: skip; default 3)",
    )
    parser.add_argument(
        "--compare-with",
        nargs="+",
        type=Path,
        default=[],
        metavar="BUNDLE",
        help="existing bundles (e.g. the one this run replaces) scored on this run's test split and "
        "out-of-distribution sets: before -> after on the same data, in report.json `compared`",
    )
    parser.add_argument(
        "--nested-top-k",
        type=int,
        default=8,
        help="configurations (the sweep's top K) fitted on held-out data sources for the source-held-out choice "
        "and its nested estimate in the report (0: skip both; default 8)",
    )
    parser.add_argument(
        "--selection-margin",
        type=float,
        default=SELECTION_MARGIN,
        help="the held-out-source choice may only pick a configuration whose validation AUROC is within this of "
        f"the best candidate's: a few held-out sources are a noisy judge (default {SELECTION_MARGIN}; inf: no guard)",
    )
    parser.add_argument(
        "--c-grid",
        type=_c_grid,
        default=C_GRID,
        metavar="C[,C]",
        help="inverse regularisation strengths the held-out-kind sweep tries for logistic and contrast probes "
        f"(default {','.join(f'{c:g}' for c in C_GRID)}; the report records the grid, so a replay uses it)",
    )
    parser.add_argument(
        "--no-select-by-source",
        dest="select_by_source",
        action="store_false",
        help="ship the sweep's held-out-kind choice even when the pool has two or more data sources "
        "(the nested source-held-out estimate is still reported)",
    )
    parser.add_argument(
        "--augment",
        type=_augment_names,
        default=None,
        metavar="NAME[,NAME]",
        help="labelled copies added to the pool (sincerity: a share of the answers behind an assertion such as "
        "'Honestly, ', on both labels, so the assertion alone cannot move the score; monitoring: a share of the "
        "items with a watcher named in the system prompt, so being told of a monitor cannot either); none: no "
        "copies (default: sincerity for deception, none for --data files and other behaviours)",
    )
    parser.add_argument("--window", type=int, default=8, help="rolling_mean_max window (tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--id", dest="probe_id", default=None, help="probe id (default: from behaviour and method)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="bundle folder (default: $PROBEWATCH_HOME/bundles/<model>/<id>, listed by `probes list`)",
    )
    parser.add_argument(
        "--init-from",
        type=Path,
        default=None,
        help="retrain this bundle with its settings (refused if --model's fingerprint differs)",
    )
    parser.add_argument("--force", action="store_true", help="replace a bundle at --out even if made for another model")
    parser.add_argument(
        "--no-balance-kinds",
        dest="balance_kinds",
        action="store_false",
        help="weight examples equally instead of every data kind equally",
    )
    parser.add_argument("--control-size", type=int, default=400, help="control dialogues to generate (default 400)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--max-tokens", type=int, default=1024, help="keep the last N tokens of a dialogue (as scoring does)"
    )
    parser.add_argument("--no-plots", dest="plots", action="store_false")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _augment_names(text: str) -> tuple[str, ...]:
    """`--augment sincerity` / `none`; check_config refuses an unknown name before any work."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    return () if names == ("none",) else names


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train a probe bundle (extraction, sweep, calibration, report)")
    add_train_arguments(parser)
    add_json_arg(parser)
    parser.set_defaults(func=_run)


def config_from_args(args: argparse.Namespace):
    from probewatch.training.pipeline import DEFAULT_METHODS, TrainConfig

    return TrainConfig(
        behaviour=args.behaviour,
        model=args.model,
        data_dir=args.data_dir,
        data_files=args.data or (),
        ood_files=args.ood,
        extra_files=args.extra_data,
        control_file=args.control,
        layers=args.layers,
        methods=args.method or DEFAULT_METHODS,
        aggregations=args.aggregation or None,
        token_selections=args.token_selection or None,
        per_token=args.per_token,
        standardize=args.standardize,
        fpr=args.fpr,
        hard_negative_fpr=args.hard_negative_fpr,
        hard_negatives_per_kind=args.hard_negatives_per_kind,
        transfer_threshold=args.transfer_threshold,
        uncertainty_band=args.uncertainty_band,
        band_control_fpr=args.band_control_fpr,
        family=args.family,
        multi_layer=args.multi_layer,
        nested_top_k=args.nested_top_k,
        selection_margin=args.selection_margin,
        heldout_Cs=args.c_grid,
        augment=args.augment,
        select_by_source=args.select_by_source,
        window=args.window,
        seed=args.seed,
        probe_id=args.probe_id,
        out=args.out,
        force=args.force,
        init_from=args.init_from,
        compare_with=list(args.compare_with),
        balance_kinds=args.balance_kinds,
        control_n=args.control_size,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        plots=args.plots,
        progress=not args.quiet,
        command="probewatch " + shlex.join(sys.argv[1:]),
    )


def _run(args: argparse.Namespace) -> int:
    from probewatch.training.pipeline import train

    if args.behaviour is None and args.init_from is None:
        raise SystemExit("probewatch train: error: --behaviour is required (or --init-from BUNDLE)")
    result = train(config_from_args(args))
    summary = summarize(result.report.to_json())
    if args.json:
        print_json(summary)
    else:
        print_summary(summary)
    return 0


def summarize(report: dict) -> dict:
    m = report["metrics"]
    chosen = report["selection"]["chosen"]
    return {
        "probe_id": report["probe_id"],
        "behaviour": report["behaviour"],
        "bundle": report["bundle"],
        "layer": chosen["layer"],
        "layers": _probe_layers(report),
        "method": chosen["method"],
        "token_selection": chosen["token_selection"],
        "aggregation": chosen["aggregation"],
        "per_token": chosen["per_token"],
        "auroc": m["auroc"],
        "auroc_heldout_kind": m["auroc_heldout_kind"],
        "auroc_ood": m["auroc_ood"],
        "recall_at_fpr_control": m["recall_at_fpr_control"],
        "fpr": m["fpr"],
        "fpr_control_heldout": m["fpr_control_heldout"],
        "threshold": report["threshold"]["value"],
        "operating_point": {
            k: report["operating_point"]["shipped"][k] for k in ("recall", "fpr_negatives", "fpr_control_heldout")
        }
        | {
            "set_by": report["operating_point"]["set_by"],
            "control_threshold": report["operating_point"]["control_threshold"],
            "hard_negative_kind": report["operating_point"].get("hard_negative_kind"),
        },
        "selected_by": report["selection"]["basis"],
        "compared": report.get("compared") or [],
        "report": str(Path(report["bundle"]) / "report.json"),
    }


def _probe_layers(report: dict) -> list[int]:
    """Every layer the bundle reads: the concatenated ones where a multi-layer probe shipped."""
    multi = report.get("multi_layer") or {}
    return list(multi["layers"]) if multi.get("shipped") else [report["selection"]["chosen"]["layer"]]


def _kind_note(op: dict) -> str:
    """' from <kind>' where one kind's own negatives set the threshold (calibration.negatives_threshold)."""
    kind = op.get("hard_negative_kind")
    return f" from {kind}" if kind and op.get("set_by") == "hard_negatives" else ""


def print_summary(s: dict) -> None:
    from probewatch.training.compare import TEST_SET, befores

    def f(x) -> str:
        return "n/a" if x is None else f"{x:.3f}"

    print(f"bundle     {s['bundle']}  (id {s['probe_id']}, {s['behaviour']})")
    reads = f"layers {'+'.join(map(str, s['layers']))}" if len(s["layers"]) > 1 else f"layer {s['layer']}"
    print(
        f"probe      {reads}, "
        f"{s['method']}, {s['token_selection']}, "
        f"{'per-token' if s['per_token'] else 'per-example'}, aggregation {s['aggregation']} (chosen by {s['selected_by']})"
    )
    print(
        f"AUROC      test {f(s['auroc'])}   held-out kinds {f(s['auroc_heldout_kind'])}   "
        + "   ".join(f"ood {k} {f(v)}" for k, v in s["auroc_ood"].items())
    )
    print(
        f"recall     {f(s['recall_at_fpr_control'])} at {100 * s['fpr']:g}% FPR on control "
        f"(threshold {s['operating_point']['control_threshold']:.3f}; realised FPR on held-out control "
        f"{f(s['fpr_control_heldout'])})"
    )
    op = s["operating_point"]
    print(
        f"shipped    threshold {s['threshold']:.3f} (set by {op['set_by']}{_kind_note(op)}): recall {f(op['recall'])}, "
        f"flags {f(op['fpr_negatives'])} of the test negatives and {f(op['fpr_control_heldout'])} of held-out control"
    )
    for c in s["compared"]:  # --compare-with: before -> after on this run's sets
        name = f"{c.get('probe_id') or c['path']} (layers {'+'.join(map(str, c['layers'])) or '?'})"
        if c.get("skipped"):
            print(f"compared   {name}: not scored ({c['skipped']})")
            continue
        now = {TEST_SET: s["auroc"], **s["auroc_ood"]}
        sets = befores(c)
        if TEST_SET not in sets:  # its training rows may be in this run's test split
            print(f"compared   {name}: trained on another pool, so its test AUROC here is no before (OOD sets only)")
        chosen_on = set(c.get("selected_on") or [])
        parts = [
            f"{k} {f(b)} -> {f(now.get(k))}"
            + (f" ({ci[0]:+.3f} [{ci[1]:+.3f}, {ci[2]:+.3f}])" if ci else "")
            + (" (it was chosen on this set)" if k in chosen_on else "")
            for k, (b, ci) in sets.items()
        ]
        print(f"compared   {name}: " + "   ".join(parts))
    print(f"report     {s['report']}")
