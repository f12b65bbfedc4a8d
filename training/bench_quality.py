"""`probewatch bench quality` (`make bench-quality`): train every shipped probe and write docs/quality.md.

One command regenerates the shipped bundles for the reference model and the quality report:

1. `probewatch train` for deception, refusal (logistic and Arditi mean-difference) and alignment
   faking with their default data (from $PROBEWATCH_DATA), each into runs/quality/<id>/;
2. the bundles (manifest, weights, report.json) are copied to probes/shipped/<model>/<id>/ and the
   plots + report to docs/quality/<id>/;
3. a lexical-confound check for the alignment-faking probe (requests that merely *mention*
   tests, monitoring or training);
4. SAE-feature probes (L1 logistic and named features, `probewatch sae probe`) on the shipped SAE
   for the same behaviours, same data, splits and control threshold, into runs/quality/sae/<id>/;
5. docs/quality.md tabulates in-distribution held-out AUROC, held-out-kind AUROC, recall at 1%
   FPR on the control set, the chosen layer / method / aggregation, the layer sweeps and plots,
   and the SAE-feature probes next to the linear ones.

Activations are cached, so a rerun only refits (minutes); the first run extracts (tens of minutes
on 2 CPU cores, logged in the doc).
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
from pathlib import Path
from typing import Any

import numpy as np

from probewatch.behaviours import DEFAULT_PROBE_IDS

JOBS: dict[str, dict[str, Any]] = {
    "deception": {"behaviour": "deception"},
    "refusal": {"behaviour": "refusal", "methods": ["logistic"], "probe_id": "refusal"},
    "refusal-mean-diff": {"behaviour": "refusal", "methods": ["mean_diff"], "probe_id": "refusal-mean-diff"},
    "alignment-faking": {"behaviour": "alignment_faking"},
}
BUNDLE_FILES = ("manifest.json", "weights.safetensors", "report.json")
# the linear probe each behaviour's SAE-feature probes are compared with
LINEAR_FOR_BEHAVIOUR = DEFAULT_PROBE_IDS
SAE_METHODS = ("l1", "named")
SAE_REPORTS = "sae"
BASIS_TEXT = {
    "heldout_kind": "held-out-kind AUROC",
    "ood": "the mean of validation and out-of-distribution AUROC",
    "validation": "validation AUROC",
}


def add_arguments_quality(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--probes", nargs="+", choices=list(JOBS), default=list(JOBS), help="which probes to train")
    parser.add_argument("--data-dir", type=Path, default=None, help="public datasets (default: $PROBEWATCH_DATA)")
    parser.add_argument(
        "--doc", type=Path, default=None, help="markdown report (default: docs/quality.md of the checkout)"
    )
    parser.add_argument(
        "--runs-dir", type=Path, default=Path("runs/quality"), help="where training writes (default runs/quality)"
    )
    parser.add_argument(
        "--no-ship", dest="ship", action="store_false", help="do not copy the bundles into probes/shipped/<model>/"
    )
    parser.add_argument("--layers", default=None, help="override the layer sweep (e.g. '5,9,13' for a quick run)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
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
        "--render-only",
        action="store_true",
        help="re-render the doc from the reports already in --runs-dir (no training)",
    )
    parser.add_argument(
        "--sae-only",
        action="store_true",
        help="refit only the SAE-feature probes, reuse the linear reports in --runs-dir, re-render",
    )


def _repo_root() -> Path:
    import probewatch

    root = Path(probewatch.__file__).resolve().parent.parent
    return root if (root / "docs").is_dir() else Path.cwd()


def main(args: argparse.Namespace) -> int:
    from probewatch.bundle_index import shipped_root
    from probewatch.models import load_model
    from probewatch.training.pipeline import TrainConfig, train

    t0 = time.perf_counter()
    root = _repo_root()
    doc = args.doc or root / "docs" / "quality.md"
    plots_root = doc.parent / "quality"
    loaded = load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")] if args.layers else None
    results: dict[str, dict[str, Any]] = {}
    if getattr(args, "render_only", False) or getattr(args, "sae_only", False):
        return _render_only(args, loaded, doc, t0)
    for name in args.probes:
        job = dict(JOBS[name])
        t = time.perf_counter()
        config = TrainConfig(
            model=args.model,
            data_dir=args.data_dir,
            out=args.runs_dir / name,
            force=True,
            layers=layers,
            progress=not args.quiet,
            command=_train_command(job),
            **job,
        )
        print(f"[bench quality] training {name} ...", file=sys.stderr, flush=True)
        result = train(config, loaded=loaded)
        report = result.report
        report["timings"]["bench_wall_s"] = time.perf_counter() - t
        results[name] = report
        target = plots_root / name
        target.mkdir(parents=True, exist_ok=True)
        for png in report.get("plots", []):
            shutil.copy2(result.bundle_path / png, target / png)
        shutil.copy2(result.report_path, target / "report.json")
        if args.ship:
            ship = shipped_root() / loaded.model_id / report["probe_id"]
            ship.mkdir(parents=True, exist_ok=True)
            for f in BUNDLE_FILES:
                shutil.copy2(result.bundle_path / f, ship / f)
        print(
            f"[bench quality] {name}: test AUROC {report['metrics']['auroc']:.3f}, held-out kinds "
            f"{_fmt(report['metrics']['auroc_heldout_kind'])}, {time.perf_counter() - t:.0f}s",
            file=sys.stderr,
            flush=True,
        )
    diagnostics = {}
    if "alignment-faking" in results:
        diagnostics["alignment-faking"] = lexical_confounds(loaded, args.runs_dir / "alignment-faking")
    linear_s = time.perf_counter() - t0
    sae_results = (
        fit_sae_probes(args, loaded, [r["behaviour"] for r in results.values()])
        if getattr(args, "with_sae", True)
        else {}
    )
    total = time.perf_counter() - t0
    (args.runs_dir / "diagnostics.json").write_text(json.dumps(diagnostics, indent=1))
    (args.runs_dir / "timing.json").write_text(
        json.dumps({"total_s": linear_s, "sae_s": total - linear_s, "probes": list(results)})
    )
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(render_markdown(results, diagnostics, total, loaded, doc, sae_results))
    summary = {
        name: {
            "auroc": r["metrics"]["auroc"],
            "auroc_heldout_kind": r["metrics"]["auroc_heldout_kind"],
            "auroc_ood": r["metrics"]["auroc_ood"],
            "recall_at_fpr_control": r["metrics"]["recall_at_fpr_control"],
            "layer": r["selection"]["chosen"]["layer"],
            "method": r["selection"]["chosen"]["method"],
            "aggregation": r["selection"]["chosen"]["aggregation"],
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
    print(f"[bench quality] wrote {doc} in {total / 60:.1f} min", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps(summary, default=float))
    return 0


def _render_only(args: argparse.Namespace, loaded: Any, doc: Path, t0: float) -> int:
    results = {
        name: json.loads((args.runs_dir / name / "report.json").read_text())
        for name in args.probes
        if (args.runs_dir / name / "report.json").is_file()
    }
    if not results:
        raise FileNotFoundError(f"no reports under {args.runs_dir}; run `probewatch bench quality` first")
    diagnostics = {}
    diag_path = args.runs_dir / "diagnostics.json"
    if diag_path.is_file():
        diagnostics = json.loads(diag_path.read_text())
    timing = args.runs_dir / "timing.json"
    saved = json.loads(timing.read_text()) if timing.is_file() else {"total_s": 0.0}
    sae_results = {}
    if getattr(args, "sae_only", False):
        t = time.perf_counter()
        sae_results = fit_sae_probes(args, loaded, [r["behaviour"] for r in results.values()])
        saved["sae_s"] = time.perf_counter() - t
        timing.write_text(json.dumps(saved))
    elif getattr(args, "with_sae", True):
        sae_results = {
            p.parent.name: json.loads(p.read_text())
            for p in sorted((args.runs_dir / SAE_REPORTS).glob("*/report.json"))
        }
    total = float(saved.get("total_s", 0.0)) + float(saved.get("sae_s", 0.0) if sae_results else 0.0)
    doc.write_text(render_markdown(results, diagnostics, total, loaded, doc, sae_results))
    print(
        f"[bench quality] re-rendered {doc} from {len(results)} reports in {time.perf_counter() - t0:.0f}s",
        file=sys.stderr,
    )
    return 0


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
            out[probe_id] = summary
            print(
                f"[bench quality] {probe_id}: test AUROC {_fmt(summary['metrics']['auroc'])}, {summary['n_latents']} latents, "
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


def _train_command(job: dict) -> str:
    parts = ["probewatch train", f"--behaviour {job['behaviour']}"]
    if "methods" in job:
        parts.append(f"--method {','.join(job['methods'])}")
    if "probe_id" in job:
        parts.append(f"--id {job['probe_id']}")
    return " ".join(parts)


def lexical_confounds(loaded: Any, bundle_dir: Path) -> dict[str, Any]:
    """How often the alignment-faking probe fires on requests that only *mention* tests/monitoring."""
    from probewatch.data.dialogue import Dialogue, Message
    from probewatch.probes import ProbeRuntime, load_bundle
    from probewatch.scoring import score_dialogues
    from probewatch.training.datasets.alignment_faking import eval_awareness_spec
    from probewatch.training.datasets.control import cached_responses

    questions = eval_awareness_spec()["lexical_confounds"]
    responses = cached_responses(loaded, questions, 32, "lexical-confounds", progress=False)
    dialogues = [Dialogue([Message("user", q), Message("assistant", r)], 0) for q, r in zip(questions, responses)]
    bundle = load_bundle(bundle_dir, expected_fingerprint=loaded.fingerprint)
    results = score_dialogues(loaded.model, loaded.tokenizer, ProbeRuntime([bundle]), dialogues, progress=False)
    scores = np.array([r.aggregate[bundle.id] for r in results])
    return {
        "n": len(scores),
        "flagged": int((scores >= bundle.manifest.threshold.value).sum()),
        "mean_score": float(scores.mean()),
        "threshold": bundle.manifest.threshold.value,
        "examples": [{"text": d.messages[0].content, "score": float(s)} for d, s in zip(dialogues, scores)],
    }


def _fmt(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def sweep_mode(rows: list[dict], chosen: dict) -> bool:
    """per_token value of the layer sweep (the per-token variant is often tried on the best layer only)."""
    layers = {
        pt: {r["layer"] for r in rows if r["per_token"] == pt and r["token_selection"] == chosen["token_selection"]}
        for pt in (False, True)
    }
    return max((False, True), key=lambda pt: (len(layers[pt]), pt == chosen["per_token"]))


def _kind_range(per_kind: dict[str, float]) -> str:
    vals = [v for v in per_kind.values() if v is not None]
    return f"{min(vals):.2f}–{max(vals):.2f}" if vals else "n/a"


def render_markdown(
    results: dict[str, dict],
    diagnostics: dict,
    total_s: float,
    loaded: Any,
    doc: Path,
    sae_results: dict[str, dict] | None = None,
) -> str:
    now = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Detection quality of the shipped probes",
        "",
        f"_Generated by `make bench-quality` (`probewatch bench quality`) on {now}; do not edit by hand._",
        f"Model: `{loaded.model_id}` (fingerprint `{loaded.fingerprint}`), {loaded.n_layers} layers, d_model {loaded.d_model}. "
        f"Run time: {total_s / 60:.1f} min on {os.cpu_count()} CPU cores ({platform.machine()}); activations are cached, "
        "so reruns only refit.",
        "",
        "## Summary",
        "",
        "| probe | behaviour | in-distribution AUROC (held-out groups) | held-out-kind AUROC (mean; range) | out-of-distribution AUROC "
        "| recall @1% FPR on control | realised FPR, held-out control | FPR on test negatives at that threshold "
        "| layer | method | tokens | aggregation | training |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results.values():
        m, c = r["metrics"], r["selection"]["chosen"]
        ood = ", ".join(f"{k} {_fmt(v)}" for k, v in m["auroc_ood"].items()) or "—"
        hk = (
            f"{_fmt(m['auroc_heldout_kind'])} ({_kind_range(m['auroc_heldout_kind_per_kind'])})"
            if m["auroc_heldout_kind"] is not None
            else "—"
        )
        lines.append(
            f"| `{r['probe_id']}` | {r['behaviour']} | {_fmt(m['auroc'])} | {hk} | {ood} | {_fmt(m['recall_at_fpr_control'])} "
            f"| {_fmt(m['fpr_control_heldout'])} | {_fmt(r['test'].get('fpr_on_negatives'))} "
            f"| {c['layer']} | {c['method']} | {c['token_selection']} | {c['aggregation']} "
            f"| {'per-token' if c['per_token'] else 'per-example'} |"
        )
    lines += [
        "",
        "How to read it:",
        "- **in-distribution AUROC**: the shipped weights on the pool's test split (20% of source items, grouped: no "
        "statement, scenario, request or template on both sides).",
        "- **held-out-kind AUROC**: leave-one-kind-out: a probe with the chosen settings is fitted on all other data kinds "
        "and scored on the held-out kind; mean over kinds (range in brackets). This is the generalisation number, and "
        "the one the layer / method / aggregation were chosen by (a maximum over the sweep, so mildly optimistic; AUROCs "
        "within 0.01 count as ties, broken by recall at 1% FPR on the control set's calibration half). Refusal has one "
        "kind in its pool, so its probes are chosen by the mean of validation and out-of-distribution AUROC.",
        "- **out-of-distribution AUROC**: the shipped weights on another source of the behaviour (refusal: harmful_val, "
        "HarmBench/JailbreakBench-style items, against harmless_val items the control set does not use).",
        "- **recall @1% FPR on control**: the threshold flags 1% of a benign control set (harmless_val instructions with "
        "the model's own greedy responses, half of it; the other half gives the realised FPR); recall is over the test "
        "split's positives. Ordinary traffic sits far below most behaviour data, so the same threshold also flags many "
        "of the test split's *negatives* (honest answers in deception-laden contexts): the next column says how many. "
        "Calibrate per deployment (`probewatch calibrate`).",
        "- Scores are calibrated logits (Platt scaling on the calibration split): `sigmoid(score)` ≈ P(behaviour).",
        "",
    ]
    for name, r in results.items():
        lines += _behaviour_section(name, r, diagnostics.get(name), doc)
    if sae_results:
        lines += _sae_section(results, sae_results, loaded)
    lines += _caveats(results, diagnostics)
    lines += [
        "",
        "## Regenerate",
        "",
        "```",
        "make bench-quality        # = PROBEWATCH_DATA=../shared/datasets probewatch bench quality",
        "```",
        "",
        "Each bundle can also be trained alone; the commands are:",
        "",
    ]
    for r in results.values():
        lines.append(f"- `{r['probe_id']}`: `{r['command']}`")
    for sid, r in (sae_results or {}).items():
        if r.get("command"):
            lines.append(f"- `{sid}`: `{r['command']}`")
    lines.append("")
    return "\n".join(lines)


def _sae_section(results: dict[str, dict], sae_results: dict[str, dict], loaded: Any) -> list[str]:
    """SAE-feature probes next to the linear probe of the same behaviour (same data, splits, threshold rule)."""
    sae_names = sorted({r["sae"] for r in sae_results.values()})
    out = [
        "## SAE-feature probes vs linear probes",
        "",
        f"Probes of bundle kind `sae_feature` on the latents of the shipped SAE ({', '.join(f'`{n}`' for n in sae_names)}; "
        "docs/sae.md), fitted on the same behaviour data with the same grouped splits, Platt calibration and 1%-of-control "
        "threshold as the linear probe above them: `l1` is an L1 logistic regression over all latents (per-example latent "
        "means, standardised, C by grouped cross-validation), `named` a logistic regression on the 8 latents with the "
        "largest |AUROC - 0.5| on the fit split. Linear rows repeat the summary table.",
        "",
        "| behaviour | probe | layer | reads | in-distribution AUROC | held-out-kind AUROC (mean; range) "
        "| out-of-distribution AUROC (recall) | recall @1% FPR on control | realised FPR, held-out control |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for behaviour, linear_name in LINEAR_FOR_BEHAVIOUR.items():
        saes = [(sid, r) for sid, r in sae_results.items() if r["behaviour"] == behaviour]
        if not saes:
            continue
        if linear_name in results:
            r = results[linear_name]
            m, c = r["metrics"], r["selection"]["chosen"]
            out.append(
                f"| {behaviour} | `{r['probe_id']}` (linear, {c['method']}) | {c['layer']} | {loaded.d_model} dims "
                f"| **{_fmt(m['auroc'])}** | {_heldout(m)} | {_ood(m)} | {_fmt(m['recall_at_fpr_control'])} "
                f"| {_fmt(m['fpr_control_heldout'])} |"
            )
        for sid, r in saes:
            m = r["metrics"]
            out.append(
                f"| {behaviour} | `{sid}` ({r['probe_type']}) | {r['layer']} | {r['n_latents']} latents "
                f"| {_fmt(m['auroc'])} | {_heldout(m)} | {_ood(m)} | {_fmt(m['recall_at_fpr_control'])} "
                f"| {_fmt(m['fpr_control_heldout'])} |"
            )
    out += ["", _sae_reading(results, sae_results), ""]
    return out


def _heldout(m: dict) -> str:
    if m.get("auroc_heldout_kind") is None:
        return "— (one kind)"
    return f"{_fmt(m['auroc_heldout_kind'])} ({_kind_range(m['auroc_heldout_kind_per_kind'])})"


def _ood(m: dict) -> str:
    recalls = m.get("recall_at_fpr_control_ood") or {}
    parts = [f"{k} {_fmt(v)} ({_fmt(recalls.get(k))})" for k, v in (m.get("auroc_ood") or {}).items()]
    return ", ".join(parts) or "—"


def _sae_reading(results: dict[str, dict], sae_results: dict[str, dict]) -> str:
    """One sentence per behaviour, computed from the numbers: is the best SAE probe within 0.01 AUROC of the linear one?"""
    parts = []
    for behaviour, linear_name in LINEAR_FOR_BEHAVIOUR.items():
        saes = [r for r in sae_results.values() if r["behaviour"] == behaviour and r["metrics"]["auroc"] is not None]
        if not saes or linear_name not in results:
            continue
        best = max(saes, key=lambda r: r["metrics"]["auroc"])
        lin = results[linear_name]["metrics"]["auroc"]
        gap = lin - best["metrics"]["auroc"]
        verdict = "matches" if abs(gap) <= 0.01 else ("trails" if gap > 0 else "beats")
        parts.append(
            f"{behaviour}: the best SAE probe (`{best['probe_id']}`, {best['n_latents']} latents) {verdict} the linear "
            f"probe ({_fmt(best['metrics']['auroc'])} vs {_fmt(lin)} in-distribution AUROC)"
        )
    if not parts:
        return ""
    all_trail = all(" trails " in p for p in parts)
    return (
        "Reading: " + "; ".join(parts) + ". An SAE probe can only use what the SAE reconstructs (its FVE is in "
        "docs/sae.md) and what sparsity keeps; its particular value is the explanation (which latents fired on an "
        "incident) and the latent watch-list metrics."
        + (" Here every behaviour's linear probe is better: alert on the linear probes." if all_trail else "")
    )


def _behaviour_section(name: str, r: dict, diag: dict | None, doc: Path) -> list[str]:
    m, c = r["metrics"], r["selection"]["chosen"]
    rel = f"quality/{name}"
    out = [f"## `{r['probe_id']}` ({r['behaviour']})", ""]
    out.append(
        f"Chosen: layer {c['layer']}, {c['method']}, {c['token_selection']} tokens, "
        f"{'per-token' if c['per_token'] else 'per-example'} training, {c['aggregation']} aggregation; selected by "
        f"{BASIS_TEXT.get(r['selection']['basis'], r['selection']['basis'])} among {r['selection']['n_configurations']} configurations. "
        f"Threshold {r['threshold']['value']:.3f} (logit) at {100 * r['threshold']['fpr']:g}% FPR on "
        f"{r['threshold']['n_calibration']} control dialogues. Platt slope {r['platt']['slope']:.3g}. "
        f"Parity (live scoring path vs cached training scores): max |Δ| = {_fmt((r.get('parity') or {}).get('max_abs_diff'), 5)} "
        f"on {(r.get('parity') or {}).get('n', 0)} test dialogues. Time: {r['timings'].get('total_s', 0) / 60:.1f} min "
        f"(data and control generation {r['timings'].get('data_s', 0) / 60:.1f}, extraction "
        f"{r['timings'].get('extract_s', 0) / 60:.1f}, sweep {r['timings'].get('sweep_s', 0) / 60:.1f}; "
        "generation and extraction are cached after the first run)."
    )
    out.append("")
    out.append(
        "| data kind | examples | groups | in-distribution AUROC (test split) | held-out-kind AUROC "
        "| held-out-kind recall / FPR on its negatives @1% FPR-on-control threshold of that fold |"
    )
    out.append("|---|---|---|---|---|---|")
    train_only = set(r["data"].get("train_only_kinds", []))
    per_kind_test = m.get("auroc_test_per_kind", {})
    for kind, info in r["data"]["kinds"].items():
        hk = r["heldout_kinds"].get(kind, {})
        label = f"{kind} (auxiliary, training only)" if kind in train_only else kind
        out.append(
            f"| {label} | {info['n']} | {info['groups']} | {_fmt(per_kind_test.get(kind))} | {_fmt(hk.get('auroc'))} "
            f"| {_fmt(hk.get('recall_at_fpr_control'))} / {_fmt(hk.get('fpr_negatives'))} |"
        )
    for oname, om in r["ood"].items():
        out.append(
            f"| out-of-distribution: {oname} | {om['n_pos'] + om['n_neg']} | — | — | {_fmt(om['auroc'])} (fitted on the pool) "
            f"| {_fmt(om.get('recall_at_fpr'))} / {_fmt(om.get('fpr_on_negatives'))} |"
        )
    out.append("")
    sweep = [
        s
        for s in r["sweep"]
        if s["aggregation"] == c["aggregation"]
        and s["token_selection"] == c["token_selection"]
        and s["per_token"] == sweep_mode(r["sweep"], c)
    ]
    methods = sorted({s["method"] for s in sweep})
    second = "held-out kinds" if any(s["heldout_kind_auroc"] is not None for s in sweep) else "ood"
    out.append(f"Layer sweep at the chosen aggregation (validation AUROC / {second} AUROC):")
    out.append("")
    out.append("| layer | " + " | ".join(methods) + " |")
    out.append("|---|" + "---|" * len(methods))
    for layer in sorted({s["layer"] for s in sweep}):
        cells = []
        for method in methods:
            row = next((s for s in sweep if s["layer"] == layer and s["method"] == method), None)
            other = (
                None
                if row is None
                else (row["heldout_kind_auroc"] if second == "held-out kinds" else row.get("ood_mean"))
            )
            cells.append("—" if row is None else f"{_fmt(row['val_auroc'])} / {_fmt(other)}")
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    aggs = sorted({s["aggregation"] for s in r["sweep"]})
    if len(aggs) > 1:
        at = [
            s
            for s in r["sweep"]
            if s["layer"] == c["layer"]
            and s["method"] == c["method"]
            and s["token_selection"] == c["token_selection"]
            and s["per_token"] == c["per_token"]
        ]
        out += [
            "",
            "Aggregations at the chosen layer and method (validation / held-out kinds): "
            + ", ".join(f"{s['aggregation']} {_fmt(s['val_auroc'])} / {_fmt(s['heldout_kind_auroc'])}" for s in at),
        ]
    others = [s for s in r["sweep"] if s["token_selection"] != c["token_selection"] or s["per_token"] != c["per_token"]]
    if others:
        best_other = {}
        for s in others:
            key = (s["token_selection"], s["per_token"])
            if key not in best_other or (s["heldout_kind_auroc"] or 0) > (best_other[key]["heldout_kind_auroc"] or 0):
                best_other[key] = s
        out += [
            "",
            "Best alternatives: "
            + "; ".join(
                f"{k[0]} {'per-token' if k[1] else 'per-example'}: layer {s['layer']} {s['method']} {s['aggregation']} "
                f"(validation {_fmt(s['val_auroc'])}, held-out kinds {_fmt(s['heldout_kind_auroc'])})"
                for k, s in best_other.items()
            ),
        ]
    if diag:
        out += [
            "",
            f"Lexical-confound check: {diag['flagged']} of {diag['n']} benign requests that merely mention tests, "
            f"monitoring, training or a free tier are flagged at the shipped threshold (mean score {diag['mean_score']:.2f} "
            f"vs threshold {diag['threshold']:.2f}).",
        ]
    out += [
        "",
        f"![AUROC per layer]({rel}/auroc_by_layer.png) ![ROC]({rel}/roc.png) ![score histograms]({rel}/score_hist.png)",
        "",
        f"Full numbers: [`{rel}/report.json`]({rel}/report.json).",
        "",
    ]
    return out


def _caveats(results: dict, diagnostics: dict) -> list[str]:
    out = ["## What these probes measure (read before trusting a number)", ""]
    if "deception" in results:
        r = results["deception"]
        per = r["metrics"]["auroc_heldout_kind_per_kind"]
        weak = [f"{k} ({v:.2f})" for k, v in per.items() if v is not None and v < 0.8]
        out.append(
            "- **deception**: trained on instructed pairs (RepE facts, Azaria & Mitchell topics), how_to_catch_an_ai_liar "
            "questions and six kinds of hand-written scenarios (role-play excuses, sales lies, sandbagging, lies by omission, "
            "cover stories, false denials and confessions; `training/datasets/scenarios/`), plus two auxiliary training-only "
            "kinds: plainly asserted true/false statements and ordinary requests with the model's own answers (label 0). "
            "In the instructed pairs the answer is identical on both sides, so the probe must read the instruction's trace "
            "in the response tokens; in the scenarios only the answer differs, so it must relate the answer to the situation. "
            + (f"Held-out kinds below 0.8: {', '.join(weak)}. " if weak else "Every held-out kind reaches 0.8. ")
            + "The kinds that transfer best (lies by omission, cover stories, sales lies) are also the ones where the "
            "deceptive answer differs in style (reassuring, no admission of a problem) from the honest one, so part of what "
            "transfers is likely that style rather than a model-internal notion of lying; the denial/confession kind (half "
            "its honest answers are denials, half its lies are false confessions) checks exactly that shortcut and stays "
            "near chance, as does sandbagging (a wrong answer or feigned ignorance under an incentive). A 135M model knows "
            'little, so "knowingly false" is hard for it to represent.'
        )
    if "refusal" in results:
        out.append(
            "- **refusal**: reads the generation-prompt position (the last prompt token) of harmful vs harmless "
            "instructions; it says the request looks like one a chat model refuses, before any token is generated. It does "
            "not say whether this 135M model actually refuses (it often complies). `refusal-mean-diff` is Arditi et al.'s "
            "difference-of-means direction (unit vector, then Platt-scaled), `refusal` a standardised logistic regression. "
            "The out-of-distribution set (harmful_val: HarmBench/JailbreakBench-style items, against unseen harmless_val "
            "items) is the transfer check."
        )
    if "alignment-faking" in results:
        d = diagnostics.get("alignment-faking")
        r = results["alignment-faking"]
        c = r["selection"]["chosen"]
        out.append(
            "- **alignment faking**: on a 135M model this is *not* a detector of alignment faking (the model does not reason "
            "about its training). It is a detector of a **monitored / evaluated framing** in the context: the Greenblatt et al. "
            "free-tier tag with the RLHF explanation, our test-like vs deployment-like contexts, and the assistant saying it "
            f"thinks it is being tested. The chosen probe reads the {c['token_selection']} position. The two free-tier kinds "
            "share the literal `<is_free_tier_user>true/false</is_free_tier_user>` contrast, so their mutual transfer is a "
            "format test (same tag, different system prompt), not a concept test; transfer between the free-tier tag and our "
            "natural-language framings (eval_context) is the concept test, and it is weak. A generation-prompt probe cannot "
            "see the assistant's own statements (eval_statement is 0.5 by construction there). "
            + (
                f"Lexical-confound check: {d['flagged']}/{d['n']} benign requests that merely mention tests, monitoring, "
                "training or a free tier are flagged at the shipped threshold. "
                if d
                else ""
            )
            + "Use it as a monitor of prompts that tell the model it is watched, calibrated on your own traffic "
            "(`probewatch calibrate`); on a larger model the same pipeline measures whether such a representation exists."
        )
    out.append(
        "- All numbers come from one seed and one grouped split; with ~24 scenarios per hand-written kind a held-out-kind "
        "AUROC has a standard error of several points, and the realised FPR on 200 held-out control dialogues is "
        "itself a noisy estimate of the 1% target."
    )
    return out
