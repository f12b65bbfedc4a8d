"""`probewatch eval` and `probewatch calibrate`: measure a bundle on labelled dialogues, re-threshold it.

Both score through `probewatch.scoring.score_dialogues`, the path the live parity tests pin, and
both load the bundle against the model's fingerprint: a bundle made for another model is refused.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from probewatch.arguments import add_extra_data_arg, add_json_arg, print_json


def register(sub: argparse._SubParsersAction) -> None:
    ev = sub.add_parser("eval", help="AUROC and recall at a target FPR of a bundle on labelled dialogue JSONL")
    _bundle_arg(ev)
    ev.add_argument("--data", type=Path, required=True, help="labelled dialogue JSONL")
    ev.add_argument(
        "--control", type=Path, default=None, help="benign JSONL for the threshold (default: the negatives of --data)"
    )
    ev.add_argument(
        "--compare-with",
        default=None,
        metavar="BUNDLE",
        help="also score --data with this bundle (folder or probe id; e.g. the one --bundle replaces) and report the "
        "paired AUROC change with a 95%% bootstrap interval: an interval that holds zero is no change",
    )
    ev.add_argument(
        "--misranked",
        type=int,
        default=5,
        metavar="N",
        help="with --compare-with: list the N dialogues each bundle orders wrongly against the most dialogues of the "
        "other label (what an AUROC change is made of; default 5, 0: none)",
    )
    _common(ev)
    add_json_arg(ev)
    ev.set_defaults(func=_eval)

    cal = sub.add_parser("calibrate", help="re-threshold a bundle at a target FPR on your own benign traffic")
    _bundle_arg(cal)
    cal.add_argument("--control", type=Path, required=True, help="benign dialogue JSONL (labels not needed)")
    cal.add_argument("--out", type=Path, default=None, help="write the re-thresholded bundle here (default: in place)")
    cal.add_argument(
        "--hard-negatives",
        type=Path,
        default=None,
        help="second operating point: dialogues without the behaviour that look like it (e.g. honest answers under "
        "pressure from your own traffic); the threshold also flags at most --hard-negative-fpr of them",
    )
    cal.add_argument(
        "--hard-negative-fpr", type=float, default=0.2, help="share of --hard-negatives allowed above the threshold"
    )
    add_extra_data_arg(
        cal,
        "labelled dialogues, e.g. reviewed incidents (`probewatch incidents export --labelled`): their "
        "negatives are hard negatives the threshold must clear; recall on their positives is reported",
    )
    cal.add_argument(
        "--hard-negative-margin",
        type=float,
        default=0.05,
        help="how far above the highest reviewed false positive (--extra-data) the threshold goes (logits; default 0.05)",
    )
    cal.add_argument(
        "--uncertainty-band",
        choices=("auto", "off"),
        default="auto",
        help="auto (default): where --hard-negatives or --extra-data raise the threshold above what the control set "
        "alone asks for, scores from that control threshold up to the shipped one are 'uncertain' (a low-priority "
        "incident for review, no alert); off: no band",
    )
    cal.add_argument(
        "--uncertain-from",
        "--uncertain-below",
        dest="uncertain_from",
        type=float,
        default=None,
        metavar="LOGIT",
        help="explicit lower edge of the uncertainty band [LOGIT, threshold) (overrides --uncertainty-band)",
    )
    cal.add_argument(
        "--no-plot",
        dest="plot",
        action="store_false",
        help="do not draw threshold_band.png (recall / flagged share vs threshold, band shaded) next to the bundle",
    )
    _common(cal)
    add_json_arg(cal)
    cal.set_defaults(func=_calibrate)


def _bundle_arg(parser: argparse.ArgumentParser) -> None:
    """`--bundle`, also accepted as `--bundles` (hidden): the name `score`, `serve` and `demo` use."""
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--bundle", help="bundle folder or probe id")
    group.add_argument("--bundles", dest="bundle", help=argparse.SUPPRESS)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default=None,
        help="model spec (default: the model the bundle names); its fingerprint must match the bundle's",
    )
    parser.add_argument(
        "--fpr",
        type=_rate,
        default=0.01,
        help="target false-positive rate, a fraction in (0, 1) (default 0.01 = 1%%)",
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=1024, help="keep the last N tokens of a dialogue")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _load(args: argparse.Namespace, *also: str):
    """(loaded model, [the --bundle bundle, then each bundle `also` names]): every spec (folder or probe id)
    resolved once and every bundle verified against the model's fingerprint before any scoring."""
    from probewatch.bundle_index import resolve_bundle_specs
    from probewatch.models import load_model
    from probewatch.probes import load_bundle, read_manifest

    paths = [resolve_bundle_specs([spec])[0] for spec in (args.bundle, *also)]
    loaded = load_model(args.model or read_manifest(paths[0]).model.id)
    bundles = [load_bundle(p, expected_fingerprint=loaded.fingerprint, expected_d_model=loaded.d_model) for p in paths]
    return loaded, bundles


def _scores(loaded, bundle, dialogues, args) -> list[float]:
    from probewatch.probes import ProbeRuntime
    from probewatch.scoring import score_dialogues

    runtime = ProbeRuntime([bundle])
    results = score_dialogues(
        loaded.model,
        loaded.tokenizer,
        runtime,
        dialogues,
        batch_size=args.batch_size,
        max_tokens=args.max_tokens,
        progress=not args.quiet,
    )
    return [r.aggregate[bundle.id] for r in results]


def _eval(args: argparse.Namespace) -> int:
    from probewatch.data.dialogue import load_dialogues
    from probewatch.errors import ProbewatchError
    from probewatch.metrics import recall_at_threshold
    from probewatch.training.metrics import detection_metrics

    dialogues = load_dialogues(args.data)  # labels required; errors name file and line
    control = load_dialogues(args.control, require_label=False) if args.control else None
    labels = [d.label for d in dialogues if d.label is not None]  # all of them: load_dialogues requires labels
    if args.compare_with and not 0 < sum(labels) < len(labels):
        raise ProbewatchError(f"--compare-with: {args.data} needs both labels to compare AUROCs")
    if not (0 < sum(labels) < len(labels)) and control is None:
        raise ProbewatchError(f"{args.data}: needs both labels for AUROC (or pass --control for recall)")
    loaded, (bundle, *compared) = _load(args, *([args.compare_with] if args.compare_with else []))
    before = compared[0] if compared else None
    scores = _scores(loaded, bundle, dialogues, args)
    control_scores = _scores(loaded, bundle, control, args) if control else None
    result = detection_metrics(scores, labels, control_scores, args.fpr)
    t = bundle.manifest.threshold.value
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    result.update(
        {
            "probe_id": bundle.id,
            "behaviour": bundle.manifest.behaviour,
            "data": str(args.data),
            "control": str(args.control) if args.control else None,
            "model": loaded.model_id,
            "bundle_threshold": t,
            "recall_at_bundle_threshold": recall_at_threshold(pos, t) if pos else None,
            "fpr_at_bundle_threshold": (sum(s >= t for s in neg) / len(neg)) if neg else None,
        }
    )
    result["chosen_on"] = _chosen_on(bundle)
    if before is not None:
        before_scores = _scores(loaded, before, dialogues, args)
        result["compare_with"] = _paired_change(before, before_scores, scores, labels)
        result["compare_with"] |= _misordered(before_scores, scores, labels, dialogues, args.misranked)
    if args.json:
        print_json(result)
    else:
        f = lambda x: "n/a" if x is None else f"{x:.4f}"
        print(
            f"probe {bundle.id} ({bundle.manifest.behaviour}) on {args.data}: n_pos {result['n_pos']}, n_neg {result['n_neg']}"
        )
        print(f"AUROC                  {f(result['auroc'])}")
        print(
            f"recall @ {100 * args.fpr:g}% FPR       {f(result.get('recall_at_fpr'))} "
            f"(threshold {f(result['threshold'])} from the {result['threshold_source']})"
        )
        print(
            f"at the bundle's threshold {t:.3f}: recall {f(result['recall_at_bundle_threshold'])}, "
            f"FPR on negatives {f(result['fpr_at_bundle_threshold'])}"
        )
        chosen = [(bundle.id, result["chosen_on"])]
        if before is not None:
            chosen.append((f"{before.id} (--compare-with)", result["compare_with"]["chosen_on"]))
        for name, sets in chosen:
            if sets:
                print(
                    f"note: {name} was chosen by its run on {', '.join(sets)} (the best of its sweep there): "
                    "its AUROC on that data is optimistic"
                )
        if before is not None:
            c = result["compare_with"]
            print(
                f"vs {c['probe_id']} ({c['bundle']}): AUROC {f(c['auroc'])} -> {f(result['auroc'])} "
                f"({c['change']:+.4f}, 95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}; "
                + ("holds zero: no measurable change)" if c["ci_low"] <= 0.0 <= c["ci_high"] else "excludes zero)")
            )
            pairs = result["n_pos"] * result["n_neg"]
            for side, name in (("before", c["probe_id"] + " (--compare-with)"), ("after", bundle.id)):
                rows = c["misranked"][side]
                print(
                    f"  {name}: {c['misordered'][side]:g} of {pairs} pairs ordered wrongly"
                    + (", most by:" if rows else "")
                )
                for r in rows:
                    kind = "positive" if r["label"] == 1 else "negative"
                    print(f"    #{r['index']} {kind}, {r['pairs']:g} pairs, score {r['score']:.3f}: {r['text']}")
    return 0


def _paired_change(before, before_scores: list[float], scores: list[float], labels: list[int]) -> dict:
    """The other bundle's AUROC on the same dialogues and the paired change (this bundle − it) with the
    bootstrap interval `train --compare-with` reports (positives and negatives resampled separately)."""
    import numpy as np

    from probewatch.metrics import auroc
    from probewatch.training.compare import BOOTSTRAP_DRAWS, CI_LEVEL, paired_auroc_delta

    y, old = np.asarray(labels), np.asarray(before_scores)
    paired = paired_auroc_delta(old, np.asarray(scores), y)
    assert paired is not None  # _eval refuses --compare-with on one-class data
    change, low, high = paired
    return {
        "probe_id": before.id,
        "bundle": str(before.path),
        "auroc": auroc(old, y),
        "change": change,
        "ci_low": low,
        "ci_high": high,
        "ci_level": CI_LEVEL,
        "draws": BOOTSTRAP_DRAWS,
        "chosen_on": _chosen_on(before),
    }


def _chosen_on(bundle) -> list[str]:
    """The out-of-distribution sets the bundle's own run chose it on (its report's selection basis "ood"): its
    AUROC on one of them is the best of that run's sweep, not an unseen-data figure."""
    from probewatch.training.compare import bundle_report, selected_on

    return selected_on(bundle_report(bundle.path))


#: characters of a dialogue's last message shown beside a misranked item
SNIPPET = 120


def _misordered(before_scores: list[float], scores: list[float], labels: list[int], dialogues, top: int) -> dict:
    """Per bundle, the (positive, negative) pairs it orders wrongly, ties half ((1 - AUROC) x n_pos x n_neg), and
    the `top` dialogues in most of them: what the paired AUROC change is made of."""
    import numpy as np

    from probewatch.metrics import misordered_pairs

    y = np.asarray(labels)
    counts = {"before": misordered_pairs(before_scores, y), "after": misordered_pairs(scores, y)}
    sides = {"before": before_scores, "after": scores}
    return {
        "misordered": {side: float(c[y == 1].sum()) for side, c in counts.items()},
        "misranked": {side: _misranked(c, sides[side], labels, dialogues, top) for side, c in counts.items()},
    }


def _misranked(counts, scores: list[float], labels: list[int], dialogues, top: int) -> list[dict]:
    """The `top` dialogues in the most wrongly ordered pairs (`counts`; none that are in none): index in --data,
    label, pairs, score and the start of the last message (the request for a prompt reader, the answer otherwise)."""
    import numpy as np

    order = sorted(np.flatnonzero(counts > 0), key=lambda i: (-counts[i], i))[: max(top, 0)]
    return [
        {
            "index": int(i),
            "label": int(labels[i]),
            "pairs": float(counts[i]),
            "score": float(scores[i]),
            "text": " ".join(dialogues[i].messages[-1].content.split())[:SNIPPET],
        }
        for i in order
    ]


def _reviewed(loaded, bundle, args: argparse.Namespace, from_control: float) -> dict:
    """Score the extra labelled data; the threshold that clears its negatives; what it costs on its positives."""
    from probewatch.data.reviewed import load_extra_data
    from probewatch.errors import ProbewatchError
    from probewatch.training.calibration import clear_hard_negatives

    extra = load_extra_data(args.extra_data, probe_id=bundle.id, behaviour=bundle.manifest.behaviour)
    if not extra:
        raise ProbewatchError(
            f"--extra-data: no dialogues about probe {bundle.id} / {bundle.manifest.behaviour} in "
            f"{', '.join(map(str, args.extra_data))}"
        )
    scores = _scores(loaded, bundle, extra, args)
    negative = [s for s, d in zip(scores, extra) if d.label == 0]
    positive = [s for s, d in zip(scores, extra) if d.label == 1]
    threshold = clear_hard_negatives(from_control, negative, args.hard_negative_margin)
    return {
        "threshold": threshold,
        "n_negative": len(negative),
        "n_positive": len(positive),
        "max_negative_score": max(negative) if negative else None,
        "flagged_negative": sum(s >= threshold for s in negative),
        "recall_positive": (sum(s >= threshold for s in positive) / len(positive)) if positive else None,
        "scores": [
            {"score": s, "label": d.label, "incident_id": (d.meta or {}).get("incident_id")}
            for s, d in zip(scores, extra)
        ],
    }


def _rate(text: str) -> float:
    """A rate strictly between 0 and 1: `--fpr 5` (meant as 5%) is refused, not reported as "500% FPR"."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < value < 1.0:  # NaN fails this too
        hint = f" (for {value:g}% pass {value / 100:g})" if 1.0 <= value < 100.0 else ""
        raise argparse.ArgumentTypeError(f"must be a fraction in (0, 1), got {text}{hint}")
    return value


def _calibrate(args: argparse.Namespace) -> int:
    import copy

    from probewatch.data.dialogue import load_dialogues
    from probewatch.errors import ProbewatchError
    from probewatch.probes import save_bundle
    from probewatch.probes.calibration import reference_from_scores
    from probewatch.training.calibration import operating_point

    if not 0.0 <= args.hard_negative_fpr < 1.0:
        raise ProbewatchError(f"--hard-negative-fpr must be in [0, 1), got {args.hard_negative_fpr}")
    control = load_dialogues(args.control, require_label=False)
    hard = load_dialogues(args.hard_negatives, require_label=False) if args.hard_negatives else None
    loaded, (bundle,) = _load(args)
    scores = _scores(loaded, bundle, control, args)
    hard_scores = _scores(loaded, bundle, hard, args) if hard else None
    point = operating_point(scores, args.fpr, hard_scores, args.hard_negative_fpr if hard else None)
    manifest = copy.deepcopy(bundle.manifest)
    old = bundle.manifest.threshold
    manifest.threshold.value = float(point.value)
    manifest.threshold.method = "fpr+hard_negatives" if hard else "fpr"
    manifest.threshold.fpr = args.fpr
    manifest.extra["operating_point"] = {
        "control_threshold": point.control_threshold,
        "fpr": args.fpr,
        "hard_negative_threshold": point.hard_negative_threshold,
        "hard_negative_fpr": point.hard_negative_fpr,
        "hard_negatives": str(args.hard_negatives) if hard else None,
        "set_by": point.set_by,
    }
    from_control = float(point.value)  # reviewed false positives can only raise it further
    manifest.threshold.calibration_set, manifest.threshold.n_calibration = Path(args.control).name, len(scores)
    reviewed = _reviewed(loaded, bundle, args, from_control) if args.extra_data else None
    if reviewed is not None:
        manifest.threshold.value = reviewed["threshold"]
        if reviewed["threshold"] > from_control:
            manifest.threshold.method = "fpr+hard_negatives"
        names = " + ".join(p.name for p in args.extra_data)
        manifest.threshold.calibration_set = (
            f"{Path(args.control).name} + {names} ({reviewed['n_negative']} hard negatives)"
        )
        manifest.threshold.n_calibration = len(scores) + reviewed["n_negative"]
    sets = {"control": scores, "hard negatives": hard_scores or [], **_reviewed_sets(reviewed)}
    band_summary = _apply_band(args, point, manifest, sets)
    band = manifest.threshold.uncertain_from
    # the drift reference: the new control set's score bins at the new threshold (probes/calibration.py)
    reference = reference_from_scores(scores, manifest.threshold.value, calibration_set=Path(args.control).name)
    if reference is not None:
        manifest.extra["calibration_reference"] = reference.to_json()
    history = manifest.extra.setdefault("threshold_history", [])
    history.append({"value": old.value, "fpr": old.fpr, "calibration_set": old.calibration_set})
    manifest.weights_sha256, manifest.created_at = "", ""
    out = args.out or bundle.path
    save_bundle(out, manifest, bundle.tensors)
    plot = _band_plot(out, bundle.id, manifest.threshold.value, band, sets) if args.plot else None
    summary = {
        "probe_id": bundle.id,
        "bundle": str(out),
        "threshold": manifest.threshold.value,
        "fpr": args.fpr,
        "n_control": len(scores),
        "previous_threshold": history[-1]["value"],
        "set_by": point.set_by,
        "control_threshold": point.control_threshold,
        "hard_negative_threshold": point.hard_negative_threshold,
        "threshold_from_control": from_control,
        "reviewed": reviewed,
        "uncertainty_band": band_summary,
        "plot": plot,
    }
    if args.json:
        print_json(summary)
    else:
        print(
            f"{bundle.id}: threshold {history[-1]['value']:.3f} -> {manifest.threshold.value:.3f} "
            f"({100 * args.fpr:g}% FPR on {len(scores)} dialogues of {args.control}"
            + (
                f"; at most {100 * args.hard_negative_fpr:g}% of {len(hard_scores)} hard negatives, set by {point.set_by}"
                if hard_scores is not None
                else ""
            )
            + f"); wrote {out}",
            file=sys.stderr,
        )
        if band is not None:
            share = band_summary["shares"].get("control", {}).get("uncertain") or 0.0
            print(
                f"  uncertainty band [{band:.3f}, {manifest.threshold.value:.3f}) ({band_summary['set_by']}): "
                f"{100 * share:.3g}% of the control set would be low-priority incidents (no alert)",
                file=sys.stderr,
            )
        if reviewed is not None:
            recall = reviewed["recall_positive"]
            print(
                f"  reviewed: {reviewed['n_negative']} hard negatives (now flagged: {reviewed['flagged_negative']}), "
                f"{reviewed['n_positive']} positives (recall {'n/a' if recall is None else f'{recall:.3f}'})",
                file=sys.stderr,
            )
        print(out)
    return 0


def _reviewed_sets(reviewed: dict | None) -> dict[str, list[float]]:
    """The reviewed incidents' scores by verdict (--extra-data), for the band's summary and plot."""
    if not reviewed:
        return {}
    rows = reviewed["scores"]
    return {
        "reviewed positives": [r["score"] for r in rows if r["label"] == 1],
        "reviewed negatives": [r["score"] for r in rows if r["label"] == 0],
    }


def _apply_band(args: argparse.Namespace, point, manifest, sets: dict) -> dict:
    """Set (or clear) the manifest's uncertainty band below its new threshold; how it was set and, per score
    set, the share flagged, uncertain and recorded at all (also kept in extra.operating_point)."""
    from probewatch.errors import ProbewatchError
    from probewatch.training.calibration import CalibrationError, band_basis, band_shares, uncertainty_band

    explicit, threshold = args.uncertain_from, manifest.threshold.value
    try:
        wanted = explicit is not None or args.uncertainty_band == "auto"
        band = uncertainty_band(point, threshold, explicit) if wanted else None
    except CalibrationError as exc:
        raise ProbewatchError(f"--uncertain-from: {exc}") from None
    manifest.threshold.uncertain_from = band
    set_by = "explicit" if explicit is not None else band_basis(point, threshold, band)
    shares = {name: band_shares(s, band, threshold) for name, s in sets.items() if len(s)}
    manifest.extra["operating_point"]["uncertainty_band"] = {
        "uncertain_from": band,
        "set_by": set_by,
        "control_uncertain": shares.get("control", {}).get("uncertain"),
    }
    return {"uncertain_from": band, "threshold": threshold, "set_by": set_by, "shares": shares}


def _band_plot(out: Path, probe_id: str, threshold: float, band: float | None, sets: dict) -> str:
    """threshold_band.png next to the written bundle (training/band_plot.py)."""
    import numpy as np

    from probewatch.training.band import BAND_PLOT, plot_threshold_band

    path = plot_threshold_band(
        {k: np.asarray(v, dtype=float) for k, v in sets.items() if len(v)},
        threshold,
        band,
        Path(out) / BAND_PLOT,
        f"{probe_id}: flagged share vs threshold" + (" (uncertainty band shaded)" if band is not None else ""),
        positives=("reviewed positives",),
    )
    return str(path)
