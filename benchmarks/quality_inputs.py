"""What docs/quality.md is rendered from, kept beside it so that any clone can re-render it or run the bench in parts.

`probewatch bench quality` writes its reports into the runs folder (runs/quality/, not committed) and renders
the doc from everything there: a run of some probes (`--probes`) documents all of them from the reports earlier
parts left. A fresh clone has no runs folder, so a part run there would drop every probe it did not train, the
deception family, the SAE-feature probes, the evasion table and the previous-run baseline from the doc. So the
inputs are published next to the doc (docs/quality/, committed with it) after each render, and seeded back into
an empty runs folder before the next: the runs folder wins where it has a file.

Published files, relative to both folders: <probe>/report.json (already copied by the run) and
<probe>/family_report.json, sae/<probe>/report.json, evasion.json, diagnostics.json, baseline.json, timing.json.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

from probewatch.benchmarks.quality_extras import EVASION_REPORT, FAMILY_REPORT

#: run-level inputs (the rest live in one folder per probe)
RUN_FILES = (EVASION_REPORT, "diagnostics.json", "baseline.json", "timing.json")
REPORT = "report.json"
SAE_REPORTS = "sae"

__all__ = ["RUN_FILES", "SAE_REPORTS", "input_files", "publish_inputs", "seed_runs_dir"]


def input_files(folder: Path, probes: Iterable[str]) -> list[Path]:
    """Every doc input present under `folder`, relative to it."""
    wanted = [Path(f) for f in RUN_FILES]
    for name in probes:
        wanted += [Path(name) / REPORT, Path(name) / FAMILY_REPORT]
    sae = folder / SAE_REPORTS
    if sae.is_dir():
        wanted += [p.relative_to(folder) for p in sorted(sae.glob(f"*/{REPORT}"))]
    return [p for p in wanted if (folder / p).is_file()]


def seed_runs_dir(runs_dir: Path, published: Path, probes: Iterable[str]) -> list[Path]:
    """Copy the published inputs the runs folder lacks into it; returns what was copied (relative paths)."""
    return _copy_inputs(published, runs_dir, probes, overwrite=False)


def publish_inputs(runs_dir: Path, published: Path, probes: Iterable[str]) -> list[Path]:
    """Copy every input of the rendered doc from the runs folder next to the doc; returns what was copied."""
    return _copy_inputs(runs_dir, published, probes, overwrite=True)


def _copy_inputs(source: Path, target: Path, probes: Iterable[str], overwrite: bool) -> list[Path]:
    copied = []
    for rel in input_files(source, probes):
        if overwrite or not (target / rel).exists():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / rel, target / rel)
            copied.append(rel)
    return copied
