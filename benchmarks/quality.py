"""`probewatch bench quality` (`make bench-quality`): train every shipped probe and write docs/quality.md.

The run (this module) and the document (`training/quality_doc.py`, a pure function of the
reports) are separate:

1. `probewatch train` for deception, refusal (logistic and Arditi mean-difference), alignment
   faking, evaluation awareness and monitored framing with their default data (from
   $PROBEWATCH_DATA), each into runs/quality/<id>/;
2. the plots + report go to docs/quality/<id>/; with `--ship` (what `make bench-quality` passes)
   the bundles (manifest, weights, report.json) are also copied to probes/shipped/<model>/<id>/,
   unless the ship gate refuses the run (`quality_ship.py`: its threshold flags more than half of a
   test kind's negatives; the previous run stays and the bench exits 1); without it the shipped
   bundles are left alone;
3. a lexical-confound check (`lexical.py`): benign requests that merely *mention* the behaviour's subject
   (tests, monitoring or training; lying or honesty), answered by the model, scored by the probes that
   read that subject (`--lexical-only` reruns it on the shipped bundles);
4. the deception family (per-type probes alerting on their maximum; shipped only where it beats the
   single probe on held-out kinds) and the evasion conditions on the new bundles (`quality_extras.py`;
   `--evasion-only` measures them on the shipped bundles of `--probes` without training);
5. SAE-feature probes (L1 logistic and named features, `probewatch sae probe`) on the shipped SAE
   for deception, refusal and alignment faking, same data, splits and control threshold, into
   runs/quality/sae/<id>/;
6. the reports of the previous run (docs/quality/<id>/report.json before this run overwrites them)
   are kept in runs/quality/baseline.json, and docs/quality.md shows held-out-kind AUROC before and after;
7. everything the doc is rendered from is published next to it in docs/quality/ and seeded back into an
   empty runs folder (`quality_inputs.py`), so a fresh clone re-renders it or runs the bench in parts.

Generated responses and activations are cached, so a rerun only refits; the first run generates
and extracts (an hour or more on 2 CPU cores; the time is logged in the doc).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from probewatch.arguments import layer_list
from probewatch.benchmarks.evasion import plot as plot_evasion
from probewatch.benchmarks.harness import add_common_args
from probewatch.benchmarks.lexical import LEXICAL_CHECK, lexical_confounds
from probewatch.benchmarks.quality_extras import (
    EVASION_PER_CLASS,
    FAMILY_REPORT,
    family_reports,
    run_evasion,
    saved_evasion,
    ship_families,
)
from probewatch.benchmarks.quality_inputs import SAE_REPORTS, publish_inputs, seed_runs_dir
from probewatch.benchmarks.quality_ship import discard_previous, reject, set_aside, ship_refusal
from probewatch.training.doc_numbers import num

if TYPE_CHECKING:  # the training stack (torch) loads when the benchmark runs, not for `probewatch --help`
    from probewatch.training.quality_doc import RunInfo
    from probewatch.training.report import TrainReport

JOBS: dict[str, dict[str, Any]] = {
    "deception": {"behaviour": "deception", "family": True},
    "refusal": {"behaviour": "refusal", "methods": ["logistic"], "probe_id": "refusal"},
    "refusal-mean-diff": {"behaviour": "refusal", "methods": ["mean_diff"], "probe_id": "refusal-mean-diff"},
    "alignment-faking": {"behaviour": "alignment_faking"},
    "eval-awareness": {"behaviour": "eval_awareness"},
    "monitored-framing": {"behaviour": "monitored_framing"},
}
SAE_BEHAVIOURS = ("deception", "refusal", "alignment_faking")
SAE_METHODS = ("l1", "named")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--probes", nargs="+", choices=list(JOBS), default=list(JOBS), help="which probes to train")
    parser.add_argument("--data-dir", type=Path, default=None, help="public datasets (default: $PROBEWATCH_DATA)")
    parser.add_argument(
        "--doc", type=Path, default=None, help="markdown report (default: docs/quality.md of the checkout)"
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        default=None,
        help="where training writes (default runs/quality; with another --doc, runs/quality beside that doc)",
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="copy the trained bundles into probes/shipped/<model>/ (what `make bench-quality` does; "
        "without it only runs/ and docs/ are written)",
    )
    parser.add_argument(
        "--layers",
        type=layer_list,
        default=None,
        help="override the layer sweep (e.g. '5,9,13' or '4-12' for a quick run)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's choice; 1 is much faster on a machine shared with other jobs)",
    )
    parser.add_argument(
        "--sae",
        type=Path,
        default=None,
        help="SAE for the SAE-feature probe comparison (default: the shipped SAE for the model)",
    )
    parser.add_argument(
        "--no-sae", dest="with_sae", action="store_false", help="skip the SAE-feature probes (linear probes only)"
    )
    parser.add_argument(
        "--no-evasion",
        dest="with_evasion",
        action="store_false",
        help="skip the evasion measurement of the new bundles (training/evasion.py)",
    )
    parser.add_argument(
        "--evasion-per-class",
        type=int,
        default=EVASION_PER_CLASS,
        help=f"evasion items of each label per probe (default {EVASION_PER_CLASS}, what docs/quality.md shows)",
    )
    parser.add_argument(
        "--evasion-only",
        action="store_true",
        help="measure only the evasion conditions of the shipped bundles of --probes, keep the other probes' "
        "rows, re-render",
    )
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="re-render the doc from the reports already in --runs-dir (no training)",
    )
    parser.add_argument(
        "--sae-only",
        action="store_true",
        help="refit only the SAE-feature probes, reuse the linear reports in --runs-dir, re-render",
    )
    parser.add_argument(
        "--lexical-only",
        action="store_true",
        help="run only the lexical-confound check on the shipped bundles of --probes "
        f"({', '.join(LEXICAL_CHECK)}), keep the other probes' results, re-render",
    )


def _repo_root() -> Path:
    import probewatch

    root = Path(probewatch.__file__).resolve().parent.parent
    return root if (root / "docs").is_dir() else Path.cwd()


def default_runs_dir(doc: Path, root: Path) -> Path:
    """runs/quality for the checkout's docs/quality.md; for any other doc, runs/quality beside it. The runs folder
    wins over the inputs published with a doc, so a trial run rendered elsewhere (`--doc /tmp/x.md`) must not
    leave its reports where the next run of the checkout's doc would render from them."""
    if doc.resolve() == (root / "docs" / "quality.md").resolve():
        return Path("runs/quality")
    return doc.parent / "runs" / "quality"


def main(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import shipped_root
    from probewatch.models import load_model
    from probewatch.training.quality_doc import render_markdown

    t0 = time.perf_counter()
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    root = _repo_root()
    doc = args.doc or root / "docs" / "quality.md"
    plots_root = doc.parent / "quality"
    args.runs_dir = args.runs_dir or default_runs_dir(doc, root)
    loaded = load_model(args.model)
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    seeded = seed_runs_dir(args.runs_dir, plots_root, JOBS)  # a fresh clone: the inputs published with the doc
    if seeded:
        print(f"[bench quality] {len(seeded)} doc inputs seeded from {plots_root}", file=sys.stderr)
    if any(getattr(args, part, False) for part in ("render_only", "sae_only", "evasion_only", "lexical_only")):
        return _render_only(args, loaded, doc, t0)
    baseline = _previous_reports(plots_root, args.runs_dir, args.probes)
    results: dict[str, TrainReport] = {}
    rejected: dict[str, str] = {}
    for name in args.probes:
        report, refusal = _train_one(name, args, loaded, plots_root)
        if refusal is None:
            results[name] = report
        else:
            rejected[name] = refusal
    families = family_reports(args.runs_dir, list(results))
    if args.ship:
        _remove_retired(shipped_root() / loaded.model_id, results)
        ship_families(families, args.runs_dir, shipped_root() / loaded.model_id)
    evasion = []
    if getattr(args, "with_evasion", True):
        evasion = run_evasion(
            loaded,
            args.runs_dir,
            list(results),
            args.data_dir,
            not args.quiet,
            per_class=getattr(args, "evasion_per_class", EVASION_PER_CLASS),
        )
        if evasion:
            plot_evasion(evasion, plots_root / "evasion.json")
    diagnostics = {
        name: lexical_confounds(loaded, args.runs_dir / name, LEXICAL_CHECK[name])
        for name in results
        if name in LEXICAL_CHECK
    }
    linear_s = time.perf_counter() - t0
    sae_results = fit_sae_probes(args, loaded, _sae_behaviours(results)) if getattr(args, "with_sae", True) else {}
    total = time.perf_counter() - t0
    all_diagnostics = _merge_json(args.runs_dir / "diagnostics.json", diagnostics)
    run = _run_info(loaded, total)
    all_sae = {**_saved_sae(args.runs_dir), **sae_results}  # the SAE reports the doc shows
    _save_timing(args.runs_dir, results, linear_s, _sae_seconds(sae_results), run, all_sae)
    doc.parent.mkdir(parents=True, exist_ok=True)
    everything = {**_saved_reports(args.runs_dir), **results}  # a run of some probes documents all of them
    all_families = family_reports(args.runs_dir, list(everything))
    doc.write_text(
        render_markdown(
            everything,
            all_diagnostics,
            run,
            all_sae,
            baseline,
            all_families,
            evasion or saved_evasion(args.runs_dir),
            missing_parts(everything, all_families, all_sae),
        )
    )
    publish_inputs(args.runs_dir, plots_root, JOBS)
    summary: dict[str, Any] = {
        name: {
            "auroc": r.metrics.auroc,
            "auroc_heldout_kind": r.metrics.auroc_heldout_kind,
            "auroc_heldout_kind_per_kind": r.metrics.auroc_heldout_kind_per_kind,
            "auroc_ood": r.metrics.auroc_ood,
            "recall_at_fpr_control": r.metrics.recall_at_fpr_control,
            "operating_point": r.operating_point.to_json()["shipped"],
            "layer": r.chosen["layer"],
            "method": r.chosen["method"],
            "token_selection": r.chosen["token_selection"],
            "aggregation": r.chosen["aggregation"],
        }
        for name, r in results.items()
    }
    summary.update(
        {
            sid: {
                "auroc": r["metrics"]["auroc"],
                "auroc_heldout_kind": r["metrics"]["auroc_heldout_kind"],
                "recall_at_fpr_control": r["metrics"]["recall_at_fpr_control"],
                "n_latents": r["n_latents"],
            }
            for sid, r in sae_results.items()
        }
    )
    summary["total_s"] = total
    summary["not_shipped"] = rejected
    print(f"[bench quality] wrote {doc} in {total / 60:.1f} min", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(summary, default=float))
    for name, refusal in rejected.items():
        print(f"[bench quality] NOT SHIPPED {name}: {refusal} (quality_ship.py)", file=sys.stderr)
    return 1 if rejected else 0


def _train_one(name: str, args: argparse.Namespace, loaded: Any, plots_root: Path) -> tuple[TrainReport, str | None]:
    """Train one probe into the runs folder, publish its plots and report and, with `--ship`, its bundle;
    (report, why it was not shipped): a run the ship gate refuses (quality_ship.py) leaves the previous
    run, doc inputs and shipped bundle in place and is kept as `<id>.rejected`."""
    from probewatch.bundle_index import shipped_root
    from probewatch.training.pipeline import TrainConfig, train
    from probewatch.training.report import REPORT_FILENAME

    job = dict(JOBS[name])
    t = time.perf_counter()
    shipped = shipped_root() / loaded.model_id / name  # the bundle this run replaces, scored on its data
    layers = args.layers
    config = TrainConfig(
        compare_with=[shipped] if (shipped / "manifest.json").is_file() else [],
        model=args.model,
        data_dir=args.data_dir,
        out=args.runs_dir / name,
        force=True,
        layers=layers,
        progress=not args.quiet,
        command=_train_command(job, layers),
        **job,
    )
    if args.ship:
        set_aside(args.runs_dir, name)
    print(f"[bench quality] training {name} ...", file=sys.stderr, flush=True)
    result = train(config, loaded=loaded)
    report = result.report
    report.timings["bench_wall_s"] = time.perf_counter() - t
    refusal = ship_refusal(report) if args.ship else None
    if refusal is not None:
        kept = reject(args.runs_dir, name)
        print(
            f"[bench quality] NOT SHIPPED {name}: {refusal}; the shipped bundle and the previous run stay, "
            f"this run is in {', '.join(map(str, kept))}",
            file=sys.stderr,
            flush=True,
        )
        return report, refusal
    target = plots_root / name
    target.mkdir(parents=True, exist_ok=True)
    for png in report.plots or []:
        shutil.copy2(result.bundle_path / png, target / png)
    shutil.copy2(result.report_path, target / REPORT_FILENAME)
    if args.ship:
        discard_previous(args.runs_dir, name)
        ship = shipped_root() / loaded.model_id / report.probe_id
        ship.mkdir(parents=True, exist_ok=True)
        for f in ("manifest.json", "weights.safetensors", REPORT_FILENAME):
            shutil.copy2(result.bundle_path / f, ship / f)
    op = report.operating_point.shipped
    print(
        f"[bench quality] {name}: test AUROC {num(report.metrics.auroc)}, held-out kinds "
        f"{num(report.metrics.auroc_heldout_kind)}, recall {num(op.recall)} / flagged negatives "
        f"{num(op.fpr_negatives)} at the shipped threshold, {time.perf_counter() - t:.0f}s",
        file=sys.stderr,
        flush=True,
    )
    return report, None


def _run_info(loaded: Any, total_s: float) -> RunInfo:
    from probewatch.training.quality_doc import RunInfo

    return RunInfo(
        model_id=loaded.model_id,
        fingerprint=loaded.fingerprint,
        n_layers=loaded.n_layers,
        d_model=loaded.d_model,
        total_s=total_s,
        generated_at=_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        cpu_count=os.cpu_count() or 0,
        machine=platform.machine(),
    )


def _previous_reports(plots_root: Path, runs_dir: Path, names: list[str]) -> dict[str, dict]:
    """The reports of the previous run (docs/quality/<id>/report.json) of the probes this run trains,
    saved before it replaces them. A run of some probes (`--probes`) keeps the saved baseline of the
    others, so a bench run in several parts still compares every probe with the run before it."""
    fresh: dict[str, dict] = {}
    for name in names:
        path = plots_root / name / "report.json"
        try:
            fresh[name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
    return _merge_json(runs_dir / "baseline.json", fresh, replace=names)


def _merge_json(path: Path, new: dict[str, Any], replace: list[str] | None = None) -> dict[str, Any]:
    """`new` written over the object already saved at `path` (keys in `replace` dropped first): a run
    of some probes updates their entries and keeps the others'."""
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        old = {}
    merged = {k: v for k, v in (old if isinstance(old, dict) else {}).items() if k not in (replace or [])}
    merged.update(new)
    path.write_text(json.dumps(merged, indent=1))
    return merged


def _sae_seconds(sae_results: dict[str, dict]) -> dict[str, float]:
    """SAE-feature probe id -> seconds its fit took in this run (`fit_sae_probes` notes them)."""
    return {k: float(v["bench_wall_s"]) for k, v in sae_results.items() if "bench_wall_s" in v}


def _merge_sae_seconds(saved: dict[str, Any], sae_s: dict[str, float], documented: Mapping[str, dict]) -> float:
    """Per SAE-feature probe seconds merged into `saved` over parts (a probe fitted again replaces its entry);
    returns their sum over the SAE probes the doc shows (`documented`). A documented probe with no entry (its
    part ran before the per-probe split, or in a runs folder seeded from docs/quality/) counts its report's
    own `seconds`, the fit's measured time, so the doc's run time never drops a part."""
    merged = {k: float(v["seconds"]) for k, v in documented.items() if "seconds" in v}
    merged.update(saved.get("sae_probes_s", {}))
    merged.update(sae_s)
    if not merged:
        return float(saved.get("sae_s", 0.0))
    saved["sae_probes_s"] = merged = {k: v for k, v in merged.items() if k in documented or k in sae_s}
    return float(sum(merged.values()))


def _save_timing(
    runs_dir: Path,
    results: dict[str, TrainReport],
    linear_s: float,
    sae_s: dict[str, float],
    run: RunInfo,
    documented_sae: Mapping[str, dict],
) -> None:
    """timing.json: per-probe training seconds merged over runs of some probes; the rest of this run
    (families, evasion, confound checks) under its own key, and each SAE-feature probe's fit, so `total_s`
    plus `sae_s` is the whole bench in parts."""
    probes_s = {name: float(r.timings.get("bench_wall_s", 0.0)) for name, r in results.items()}
    other_s = max(linear_s - sum(probes_s.values()), 0.0)
    path = runs_dir / "timing.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        saved = {}
    sae_total = _merge_sae_seconds(saved, sae_s, documented_sae)  # a run with --no-sae keeps the SAE part's time
    merged_probes = {**saved.get("probes_s", {}), **probes_s}
    other = merge_part(saved.get("other_s", {}), "", list(results), other_s)
    total_s = _timing_total(merged_probes, other)
    run.total_s = total_s + sae_total
    timing = {"total_s": total_s, "sae_s": sae_total, "probes_s": merged_probes, "other_s": other}
    if "sae_probes_s" in saved:
        timing["sae_probes_s"] = saved["sae_probes_s"]
    path.write_text(json.dumps({**timing, "run": run.__dict__}))


def merge_part(other_s: Mapping[str, float], prefix: str, probes: list[str], seconds: float) -> dict[str, float]:
    """`other_s` with this part's seconds under `prefix` + its sorted probe ids, replacing every earlier part of
    the same kind whose probes this one covers: rerunning a part (in any order of `--probes`) must not count
    its time twice in the doc's run time."""

    def covered(key: str) -> bool:
        kind, _, ids = key.rpartition(":")  # "evasion:a,b" -> ("evasion", "a,b"); "a,b" -> ("", "a,b")
        return (kind + ":" if kind else "") == prefix and set(ids.split(",")) <= set(probes)

    kept = {key: s for key, s in other_s.items() if not covered(key)}
    return {**kept, prefix + ",".join(sorted(probes)): seconds}


def _timing_total(probes_s: Mapping[str, float], other_s: Mapping[str, float]) -> float:
    """timing.json's `total_s`: every probe's training plus every part's other work (the SAE fits apart)."""
    return sum(probes_s.values()) + sum(other_s.values())


def _sae_behaviours(results: dict[str, TrainReport]) -> list[str]:
    return [r.behaviour for r in results.values() if r.behaviour is not None and r.behaviour in SAE_BEHAVIOURS]


def _remove_retired(ship_root: Path, results: dict[str, TrainReport]) -> None:
    """Shipped bundles of probe ids this benchmark no longer produces (e.g. a renamed probe) are removed,
    so the sidecar does not keep serving an outdated probe under its old name."""
    if set(results) != set(JOBS) or not ship_root.is_dir():
        return  # a partial run (--probes) must not remove the others
    produced = {r.probe_id for r in results.values()}
    for folder in sorted(p for p in ship_root.iterdir() if (p / "manifest.json").is_file()):
        if folder.name not in produced:
            print(f"[bench quality] removing retired shipped bundle {folder}", file=sys.stderr)
            shutil.rmtree(folder)


def _evasion_only(args: argparse.Namespace, loaded: Any, plots_root: Path) -> None:
    """The evasion conditions on the shipped bundles of `--probes` (what the doc describes once a part has
    shipped them), saved beside the other probes' rows; the seconds count in the doc's run time."""
    t = time.perf_counter()
    root = _shipped(loaded, list(args.probes))
    evasion = run_evasion(
        loaded,
        args.runs_dir,
        list(args.probes),
        args.data_dir,
        not args.quiet,
        bundle_root=root,
        per_class=getattr(args, "evasion_per_class", EVASION_PER_CLASS),
    )
    plot_evasion(evasion, plots_root / "evasion.json")
    _count_part(args.runs_dir, "evasion:", list(args.probes), time.perf_counter() - t)


def _shipped(loaded: Any, names: list[str]) -> Path:
    """The model's shipped-bundle folder, where the `--*-only` parts measure; FileNotFoundError naming any of
    `names` without a bundle there."""
    from probewatch.bundle_index import shipped_root

    root = shipped_root() / loaded.model_id
    missing = [n for n in names if not (root / n / "manifest.json").is_file()]
    if missing:
        raise FileNotFoundError(f"no shipped bundle for {', '.join(missing)} under {root}")
    return root


def _count_part(runs_dir: Path, prefix: str, probes: list[str], seconds: float) -> None:
    """A part's seconds into timing.json (`merge_part`), so the doc's run time includes them."""
    path = runs_dir / "timing.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    other = merge_part(saved.get("other_s", {}), prefix, probes, seconds)
    saved.update(other_s=other, total_s=_timing_total(saved.get("probes_s", {}), other))
    path.write_text(json.dumps(saved))


def _lexical_only(args: argparse.Namespace, loaded: Any) -> None:
    """The lexical-confound check on the shipped bundles of `--probes` that have one, merged into
    diagnostics.json beside the other probes' results."""
    names = [n for n in args.probes if n in LEXICAL_CHECK]
    if not names:
        raise ValueError(f"--lexical-only checks {', '.join(LEXICAL_CHECK)}; --probes names none of them")
    root = _shipped(loaded, names)
    t = time.perf_counter()
    fresh = {n: lexical_confounds(loaded, root / n, LEXICAL_CHECK[n]) for n in names}
    _merge_json(args.runs_dir / "diagnostics.json", fresh)
    _count_part(args.runs_dir, "lexical:", names, time.perf_counter() - t)


def _render_only(args: argparse.Namespace, loaded: Any, doc: Path, t0: float) -> int:
    from probewatch.training.quality_doc import RunInfo, render_markdown

    results = _saved_reports(args.runs_dir)  # the doc shows every probe; --probes picks what a part refits
    if not results:
        raise FileNotFoundError(f"no reports under {args.runs_dir}; run `probewatch bench quality` first")
    diagnostics = {}
    diag_path = args.runs_dir / "diagnostics.json"
    if getattr(args, "lexical_only", False):
        _lexical_only(args, loaded)
    if diag_path.is_file():
        diagnostics = json.loads(diag_path.read_text())
    baseline_path = args.runs_dir / "baseline.json"
    baseline = json.loads(baseline_path.read_text()) if baseline_path.is_file() else {}
    if getattr(args, "evasion_only", False):
        _evasion_only(args, loaded, doc.parent / "quality")
    timing = args.runs_dir / "timing.json"
    saved: dict[str, Any] = json.loads(timing.read_text()) if timing.is_file() else {"total_s": 0.0}
    sae_results = {}
    if getattr(args, "sae_only", False):
        refit = {k: results[k] for k in args.probes if k in results}
        fresh = fit_sae_probes(args, loaded, _sae_behaviours(refit))
        sae_results = {**_saved_sae(args.runs_dir), **fresh}  # the other behaviours' fits stay in the doc
        saved["sae_s"] = _merge_sae_seconds(saved, _sae_seconds(fresh), sae_results)
        timing.write_text(json.dumps(saved))
    elif getattr(args, "with_sae", True):
        sae_results = _saved_sae(args.runs_dir)
        saved["sae_s"] = _merge_sae_seconds(saved, {}, sae_results)
    total = float(saved.get("total_s", 0.0)) + float(saved.get("sae_s", 0.0) if sae_results else 0.0)
    run = RunInfo(**saved["run"]) if "run" in saved else _run_info(loaded, total)
    run.total_s = total
    families = family_reports(args.runs_dir, list(results))
    doc.write_text(
        render_markdown(
            results,
            diagnostics,
            run,
            sae_results,
            baseline,
            families,
            saved_evasion(args.runs_dir),
            missing_parts(results, families, sae_results),
        )
    )
    publish_inputs(args.runs_dir, doc.parent / "quality", JOBS)
    print(
        f"[bench quality] re-rendered {doc} from {len(results)} reports in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )
    return 0


def missing_parts(results: dict[str, Any], families: dict[str, Any], sae_results: dict[str, dict]) -> list[str]:
    """The parts of the doc a full run would have and this render has no input for (named in the doc, not
    silently dropped): a family of a documented probe that trains one, SAE-feature probes of its behaviour."""
    out = []
    for name, job in JOBS.items():
        if name in results and job.get("family") and name not in families:
            out.append(f"the `{name}` family (`{name}/{FAMILY_REPORT}`)")
    with_sae = {r.get("behaviour") for r in sae_results.values()}
    for behaviour in SAE_BEHAVIOURS:
        documented = any(JOBS[n]["behaviour"] == behaviour for n in results)
        if documented and behaviour not in with_sae:
            out.append(f"the SAE-feature probes of {behaviour} (`{SAE_REPORTS}/sae-{behaviour.replace('_', '-')}-*`)")
    return out


def _saved_reports(runs_dir: Path) -> dict[str, TrainReport]:
    """The training reports already in `runs_dir`, in the benchmark's probe order."""
    from probewatch.training.report import REPORT_FILENAME, TrainReport

    return {
        name: TrainReport.read(runs_dir / name / REPORT_FILENAME)
        for name in JOBS
        if (runs_dir / name / REPORT_FILENAME).is_file()
    }


def _saved_sae(runs_dir: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((runs_dir / SAE_REPORTS).glob("*/report.json"))}


def default_sae_dir(loaded: Any) -> Path | None:
    """The shipped SAE for this model at the layer the probes use (the first one shipped), if any."""
    from probewatch.probes.saes.feature_probe import shipped_saes_root

    root = shipped_saes_root() / loaded.model_id
    found = sorted(p.parent for p in root.glob("*/cfg.json")) if root.is_dir() else []
    return found[0] if found else None


def fit_sae_probes(args: argparse.Namespace, loaded: Any, behaviours: list[str]) -> dict[str, dict]:
    """SAE-feature probes (L1 and named) for each behaviour, fitted like `probewatch sae probe`
    on the same data, grouped splits and control threshold as the linear probes."""
    from probewatch.training.sae.probe import fit_and_export_sae_probe

    sae_dir = args.sae or default_sae_dir(loaded)
    if sae_dir is None:
        print(
            f"[bench quality] no shipped SAE for {loaded.model_id}; skipping SAE-feature probes (--sae DIR)",
            file=sys.stderr,
        )
        return {}
    out: dict[str, dict] = {}
    for behaviour in dict.fromkeys(behaviours):
        for method in SAE_METHODS:
            probe_id = f"sae-{behaviour.replace('_', '-')}-{method}"
            t = time.perf_counter()
            print(
                f"[bench quality] SAE-feature probe {probe_id} on {Path(sae_dir).name} ...", file=sys.stderr, flush=True
            )
            summary = fit_and_export_sae_probe(
                loaded,
                Path(sae_dir),
                behaviour,
                method=method,
                probe_id=probe_id,
                out=args.runs_dir / SAE_REPORTS / probe_id,
                data_dir=args.data_dir,
                progress=not args.quiet,
                command=f"probewatch sae probe --sae {_display_path(Path(sae_dir))} "
                f"--behaviour {behaviour} --method {method}",
            )
            summary["bench_wall_s"] = time.perf_counter() - t  # timing.json's per-probe SAE seconds
            out[probe_id] = summary
            print(
                f"[bench quality] {probe_id}: test AUROC {num(summary['metrics']['auroc'])}, {summary['n_latents']} latents, "
                f"{time.perf_counter() - t:.0f}s",
                file=sys.stderr,
                flush=True,
            )
    return out


def _display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(_repo_root()))
    except ValueError:
        return str(path)


def _train_command(job: dict, layers: list[int] | None = None) -> str:
    """The `probewatch train` line that reproduces the job: docs/quality.md prints it as the bundle's recipe,
    so a `--layers` override (a narrowed sweep) must appear in it."""
    parts = ["probewatch train", f"--behaviour {job['behaviour']}"]
    if "methods" in job:
        parts.append(f"--method {','.join(job['methods'])}")
    if "probe_id" in job:
        parts.append(f"--id {job['probe_id']}")
    if job.get("family"):
        parts.append("--family")
    if layers:
        parts.append(f"--layers {','.join(map(str, layers))}")
    return " ".join(parts)
