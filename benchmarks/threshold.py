"""`probewatch bench threshold`: what would today's threshold rules ship for the trained bundles?

Sets each bundle's threshold again (training/rethreshold.py) from its own calibration split and control
set, scored through the live path, with the run's settings and the transfer share its nested estimate
asked for, and prints the recorded and the new threshold with recall, flagged negatives and flagged
control at each. Default: every shipped bundle of the model; `--probes` names some, `--bundle` adds any
trained bundle directory (with its report.json). `--check` exits 1 when a threshold changed: run it after
touching `calibration.operating_point`, before the next `make bench-quality`. Scores every calibration
and test item, so minutes per bundle on 2 CPU cores (long transcripts dominate).
"""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from probewatch.arguments import add_data_dir_arg
from probewatch.benchmarks.harness import add_common_args, finish_drift_check

DEFAULT_OUT = Path("runs/bench-threshold.json")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    add_data_dir_arg(parser)
    parser.add_argument(
        "--probes", nargs="*", default=None, help="shipped bundle ids (default, without --bundle: every shipped one)"
    )
    parser.add_argument(
        "--bundle", type=Path, action="append", default=[], help="a trained bundle directory as well (repeatable)"
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a threshold differs from the recorded one")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report; default {DEFAULT_OUT}")


def bundle_dirs(args: argparse.Namespace, shipped: Path) -> list[Path]:
    """The named shipped bundles, then the `--bundle`s; with neither, every shipped bundle with a report."""
    if args.probes:
        named = [shipped / p for p in args.probes]
        missing = [str(p) for p in named if not (p / "report.json").is_file()]
        if missing:
            raise SystemExit(
                f"probewatch bench threshold: no trained bundle with a report.json at {', '.join(missing)}"
            )
    elif args.bundle:
        named = []
    else:
        named = sorted(p.parent for p in shipped.glob("*/report.json"))
    return [*named, *args.bundle]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _at_line(label: str, at: Any) -> str:
    return (
        f"  {label:<9} {at.threshold:8.3f}  recall {_pct(at.calibration_recall)} calibration / {_pct(at.test_recall)}"
        f" test, flagged negatives {_pct(at.test_flagged_negatives)}, held-out control {_pct(at.control_heldout_flagged)}"
    )


def lines_of(result: Any) -> list[str]:
    p = result.point
    floor = "" if p.transfer_recall_floor is None else f", transfer limit capped to keep {p.transfer_recall_floor:g}"
    return [
        f"{result.probe_id}: {'CHANGED' if result.changed else 'same'}",
        _at_line("recorded", result.recorded) + f" (set by {result.recorded_set_by})",
        _at_line("now", result.now) + f" (set by {p.set_by}{floor})",
    ]


def summary(result: Any) -> dict[str, Any]:
    p = result.point
    return {
        "probe_id": result.probe_id,
        "changed": result.changed,
        "recorded": {**asdict(result.recorded), "set_by": result.recorded_set_by},
        "now": {**asdict(result.now), "set_by": p.set_by},
        "rules": {
            "control_threshold": p.control_threshold,
            "hard_negative_threshold": p.hard_negative_threshold,
            "hard_negative_kind": p.hard_negative_kind,
            "transfer_fpr": p.transfer_fpr,
            "transfer_threshold": p.transfer_threshold,
            "transfer_recall_floor": p.transfer_recall_floor,
        },
    }


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from probewatch.bundle_index import shipped_root
    from probewatch.models import load_model
    from probewatch.training.rethreshold import rethreshold

    loaded = load_model(args.model)
    dirs = bundle_dirs(args, shipped_root() / loaded.model_id)
    if not dirs:
        raise SystemExit("probewatch bench threshold: no trained bundle to threshold")
    results, lines = [], []
    for path in tqdm(dirs, desc="thresholded bundles", unit="bundle", disable=args.json):
        result = rethreshold(path, loaded, args.data_dir, progress=not args.json)
        results.append({"bundle": str(path), **summary(result)})
        lines.extend(lines_of(result))
    return finish_drift_check("threshold", "bundles", "thresholds", results, lines, args)
