"""`probewatch bench selection`: would today's selection code choose what the shipped reports record?

Replays the held-out-source choice (training/replay.py) of each published report (docs/quality/<id>/
report.json, default: every one with a held-out-source choice) or of any report.json given with
`--report`, on the same pool and sweep rows, with the current rule, guard and pre-screen. Prints the
recorded and the replayed choice, how many candidates the guard left eligible and what the rule
would have chosen without it, and whether the multi-layer probe would still ship (with the concat and
the single-layer choice on the held-out-source folds, training/multilayer_sources.py); `--nested` also
reruns the nested estimate. `--check` exits 1 when a choice changed: run it after touching the
selection code, before the next `make bench-quality`. `--record` writes the replayed multi-layer check into a
report whose run predates it (the replay must agree with the run; training/replay.py `record_concat_check`), and
with `--nested` what the nested estimate gained since: the multi-layer step (training/nested_multilayer.py) and the
tied choices' held-out AUROCs (`record_nested_additions`: the replayed estimate must also be the report's own),
for `probewatch bench quality --render-only` to show in docs/quality.md. Where the replayed nested estimate is not the
run's (the data code or the pool changed since and the bundle was not retrained), `--nested --record` writes what the
replay estimates beside the run's (`record_replay_drift`; a later replay that reproduces the run's clears it).
Reads the activation cache of the run that wrote the report (minutes each when cached).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from probewatch.arguments import add_data_dir_arg
from probewatch.benchmarks.harness import add_common_args, command_line, finish_drift_check
from probewatch.training.doc_numbers import num

DEFAULT_OUT = Path("runs/bench-selection.json")
PUBLISHED = Path("docs/quality")
REPORT = "report.json"


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    add_data_dir_arg(parser)
    parser.add_argument(
        "--probes",
        nargs="*",
        default=None,
        help=f"published probe ids under {PUBLISHED}/ (default, without --report: every one with a choice)",
    )
    parser.add_argument(
        "--report", type=Path, action="append", default=[], help="a report.json to replay as well (repeatable)"
    )
    parser.add_argument("--nested", action="store_true", help="also rerun the nested estimate (slower)")
    parser.add_argument(
        "--selection-margin",
        type=float,
        default=None,
        help="try another guard margin than each run's own (as `probewatch train --selection-margin`; inf: off)",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a replayed choice differs from the record")
    parser.add_argument(
        "--record",
        action="store_true",
        help="write the replayed multi-layer check on held-out sources (with --nested: and the nested estimate's "
        "multi-layer step and ties) into each replayed report that lacks it (refused where today's choice differs "
        "from the run's); with --nested, also where the replayed estimate departs from the run's (shown beside it)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report; default {DEFAULT_OUT}")


def report_paths(args: argparse.Namespace, published: Path = PUBLISHED) -> list[Path]:
    """The reports to replay: the named published ones, then the `--report`s; with neither, every published
    report that records a held-out-source choice."""
    if args.probes:
        named = [published / p / REPORT for p in args.probes]
        missing = [str(p) for p in named if not p.is_file()]
        if missing:
            raise SystemExit(f"probewatch bench selection: no published report {', '.join(missing)}")
    elif args.report:
        named = []
    else:  # every published report with a choice: nothing left to refuse
        return [p for p in sorted(published.glob(f"*/{REPORT}")) if _has_choice(p)]
    paths = [*named, *args.report]
    without = [str(p) for p in paths if not _has_choice(p)]
    if without:  # replaying nothing would print "same": a check that cannot fail
        raise SystemExit(
            f"probewatch bench selection: {', '.join(without)} records no held-out-source choice (a pool of one "
            "data source chooses by held-out kind in the sweep itself): nothing to replay; `probewatch bench "
            "quality --probes <id>` reruns that choice"
        )
    return paths


def _has_choice(path: Path) -> bool:
    sources = json.loads(path.read_text()).get("sources") or {}
    return sources.get("selection") is not None


def _config_line(score: Any) -> str:
    from probewatch.training.quality_sources import config_text

    return "—" if score is None else f"{config_text(score.config)} (mean {num(score.mean)}, worst {num(score.worst)})"


def summary(replay: Any) -> dict[str, Any]:
    """The JSON entry and the text lines of one replay."""
    now = replay.now
    out: dict[str, Any] = {
        "probe_id": replay.probe_id,
        "recorded": None if replay.recorded is None else replay.recorded.config,
        "now": None if now is None else now.chosen.config,
        "changed": replay.changed,
        "n_candidates": None if now is None else now.n_configurations,
        "n_eligible": None if now is None else now.n_eligible,
        "unguarded": None if now is None or now.unguarded is None else now.unguarded.config,
    }
    if replay.concat_recorded is not None:
        check = replay.concat_check
        out["multi_layer"] = {
            "recorded": replay.concat_recorded,
            "now": replay.concat_now,
            "heldout_source": None if check is None else check.to_json(),
        }
    if replay.nested is not None:
        n = replay.nested
        out["nested"] = {
            "mean": n.mean,
            "worst": n.worst,
            "worst_source": n.worst_source,
            "gap": n.optimism_gap,
            "tie_range": n.tie_range,
            "outer": {  # per held-out source: the inner choice, what it would be without the guard, the AUROC
                name: {
                    "chosen": o.selection.chosen.config,
                    "unguarded": None if o.selection.unguarded is None else o.selection.unguarded.config,
                    "auroc": o.auroc,
                    "tied": o.tied,
                }
                for name, o in n.outer.items()
            },
        }
        if n.multi_layer is not None:
            out["nested"]["multi_layer"] = asdict(n.multi_layer)
    return out


def _ships(shipped: bool | None) -> str:
    return "shipped" if shipped else "not shipped"


def lines_of(replay: Any) -> list[str]:
    from probewatch.training.multilayer_sources import loss_text
    from probewatch.training.quality_sources import heldout_auroc_text

    now = replay.now
    mark = "CHANGED" if replay.changed else "same"
    lines = [f"{replay.probe_id}: {mark}", f"  recorded  {_config_line(replay.recorded)}"]
    if now is not None:
        lines.append(f"  now       {_config_line(now.chosen)}")
        lines.append(f"  {now.n_eligible} of {now.n_configurations} candidates eligible under the guard")
        if now.unguarded is not None:
            lines.append(f"  without the guard: {_config_line(now.unguarded)}")
    if replay.concat_recorded is not None:
        lines.append(f"  multi-layer probe: {_ships(replay.concat_recorded)} recorded, {_ships(replay.concat_now)} now")
        if replay.concat_check is not None:
            c = replay.concat_check
            lines.append(f"    on held-out sources: concat {_config_line(c.concat)} vs single {_config_line(c.single)}")
            lines += [f"    concat below single on {loss_text(n, loss)}" for n, loss in sorted(c.losses.items())]
    if replay.nested is not None:
        n = replay.nested
        lines.append(
            f"  nested: mean {num(n.mean)}, worst {num(n.worst)} ({n.worst_source}), gap {num(n.optimism_gap, sign=True)}"
        )
        for name, o in n.outer.items():
            guard = (
                "" if o.selection.unguarded is None else f"; without the guard {_config_line(o.selection.unguarded)}"
            )
            auroc = heldout_auroc_text(o)
            lines.append(f"    held out {name}: {auroc} with {_config_line(o.selection.chosen)}{guard}")
        if n.multi_layer is not None:
            lines.extend(_step_lines(n.multi_layer))
    return lines


def _step_lines(step: Any) -> list[str]:
    """The nested estimate's multi-layer step (training/nested_multilayer.py), one line per held-out source."""
    layers = "+".join(str(x) for x in step.layers)
    lines = [
        f"  nested with the multi-layer step (the run's L{layers}; each source's searched without it): "
        f"mean {num(step.mean)}, change {num(step.change, sign=True)}"
    ]
    for name, o in step.outer.items():
        if not o.kind_gate:
            searched = "" if o.layers is None else f": layers {'+'.join(str(x) for x in o.layers)}"
            verdict = f"single layer (kind gate{searched})"
        elif o.concat is None:
            verdict = "concat (kind gate; no inner fold to judge)" if o.ships else "single layer"
        else:
            verdict = f"{'concat' if o.ships else 'single layer'} (inner folds: concat {_config_line(o.concat)}"
            verdict += f" vs single {_config_line(o.single)})"
        lines.append(f"    held out {name}: {num(o.auroc)} with {verdict}")
    return lines


def main(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from probewatch.jsonio import write_json_atomic
    from probewatch.models import load_model
    from probewatch.training.replay import (
        record_concat_check,
        record_nested_additions,
        record_replay_drift,
        replay_selection,
    )

    paths = report_paths(args)
    if not paths:
        raise SystemExit("probewatch bench selection: no report with a held-out-source choice to replay")
    loaded = load_model(args.model)
    by, today = command_line("selection"), datetime.now(timezone.utc).strftime("%Y-%m-%d")
    results, lines = [], []
    refused: set[str] = set()  # reports with an addition refused: the exit code says some were
    for path in tqdm(paths, desc="replayed reports", unit="report", disable=args.json):
        raw = json.loads(path.read_text())
        replay = replay_selection(raw, loaded, args.data_dir, nested=args.nested, margin=args.selection_margin)
        results.append({"report": str(path), **summary(replay)})
        lines.extend(lines_of(replay))
        if args.record:
            written = []
            for key, what, record in (
                ("check_recorded", "the multi-layer check", record_concat_check),
                ("nested_recorded", "the nested estimate's multi-layer step and ties", record_nested_additions),
            ):
                try:
                    recorded = record(raw, replay, by)
                except ValueError as exc:  # the replay disagrees with the run: the other reports still get theirs
                    refused.add(str(path))
                    lines.append(f"  not recorded: {exc}")
                    recorded = False
                results[-1][key] = recorded
                if recorded:
                    written.append(what)
            drift = record_replay_drift(raw, replay, by, today) if args.nested else None
            results[-1]["drift"] = drift  # a replay that no longer reproduces the run's estimate is shown beside it
            if drift == "recorded":
                written.append("the replayed nested estimate, which departs from the run's")
            if written or drift == "cleared":
                write_json_atomic(path, raw, indent=2)  # as report.json is written: only the new keys differ
            if written:
                lines.append(f"  recorded {' and '.join(written)} in {path}")
            if drift == "cleared":
                lines.append(f"  cleared an older departure in {path}: the replay reproduces the run's nested estimate")
    code = finish_drift_check("selection", "replays", "choices", results, lines, args)
    return 1 if refused else code
