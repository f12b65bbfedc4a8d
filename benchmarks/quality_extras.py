"""What `probewatch bench quality` does after training the probes: the deception family (shipped only
where it beats the single probe on held-out kinds) and the evasion measurement of the new bundles.

Families: `probewatch train --family` writes `<runs>/<probe>/family_report.json` and the family
folder (`family.json` + member bundles) beside the probe's run folder. The family replaces nothing:
with `--ship` it is copied to probes/shipped/<model>/<family id>/ only when its held-out-kind mean
AUROC beats the single probe's by more than `FAMILY_MARGIN` (a family alerts on its own, so shipping
one that does not win would add alerts without adding detection); otherwise a previously shipped
family of that id is removed.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

FAMILY_MARGIN = 0.01
FAMILY_REPORT = "family_report.json"
EVASION_REPORT = "evasion.json"
EVASION_PER_CLASS = 40


def family_reports(runs_dir: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """{probe name: its family report} for the runs that trained a family."""
    out = {}
    for name in names:
        path = runs_dir / name / FAMILY_REPORT
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def family_wins(report: dict[str, Any]) -> bool:
    """The family's held-out-kind mean AUROC beats the single probe's by more than FAMILY_MARGIN."""
    held = report.get("heldout_kind") or {}
    family, single = held.get("family_mean"), held.get("single_mean")
    return family is not None and (single is None or family > single + FAMILY_MARGIN)


def ship_families(families: dict[str, dict[str, Any]], runs_dir: Path, ship_root: Path) -> dict[str, bool]:
    """Copy each winning family folder to `ship_root`, remove a losing one's old copy; {family id: shipped}."""
    shipped = {}
    for report in families.values():
        family_id = report["family_id"]
        target = ship_root / family_id
        if target.exists():
            shutil.rmtree(target)
        wins = family_wins(report)
        if wins:
            shutil.copytree(runs_dir / family_id, target, ignore=shutil.ignore_patterns("*.png", "*.md"))
        verdict = "shipped" if wins else "not shipped (does not beat the single probe on held-out kinds)"
        print(f"[bench quality] family {family_id}: {verdict}", file=sys.stderr, flush=True)
        shipped[family_id] = wins
    return shipped


def run_evasion(
    loaded: Any,
    runs_dir: Path,
    names: list[str],
    data_dir: Path | None,
    progress: bool,
    bundle_root: Path | None = None,
    per_class: int = EVASION_PER_CLASS,
) -> list[dict[str, Any]]:
    """The evasion conditions (`probewatch bench evasion`) on the bundles `names` under `bundle_root` (default:
    this run's, in `runs_dir`), saved beside the other probes' rows. Returns everything saved."""
    from probewatch.benchmarks.evasion import BEHAVIOURS, evaluate_bundles
    from probewatch.probes.bundle import read_manifest
    from probewatch.training.datasets.common import resolve_data_dir

    root = runs_dir if bundle_root is None else bundle_root
    dirs = [root / n for n in names if (root / n / "manifest.json").is_file()]
    dirs = [d for d in dirs if read_manifest(d).behaviour in BEHAVIOURS]
    if not dirs:
        return []
    reports = evaluate_bundles(loaded, dirs, resolve_data_dir(data_dir), per_class, progress=progress)
    return save_evasion(runs_dir, reports)


def save_evasion(runs_dir: Path, reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`reports` replace the saved entries of their probes; the other probes' entries (a bench run in parts,
    `--probes`) stay. Returns everything saved."""
    fresh = {r["probe_id"] for r in reports}
    merged = [r for r in saved_evasion(runs_dir) if r.get("probe_id") not in fresh] + reports
    (runs_dir / EVASION_REPORT).write_text(json.dumps(merged, indent=1))
    return merged


def saved_evasion(runs_dir: Path) -> list[dict[str, Any]]:
    path = runs_dir / EVASION_REPORT
    return json.loads(path.read_text()) if path.is_file() else []
