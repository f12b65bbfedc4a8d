"""The ship gate of `probewatch bench quality --ship`: a retrained probe replaces the shipped one only
if its threshold holds on every kind of test data.

The pooled share of flagged test negatives can look fine while one kind is flagged whole: the
alignment-faking retrain of issue 22's stop 32 flagged 18% of the pooled test negatives and 100% of
the long generated transcripts' (a max-type aggregation inflating with length), exactly the
failure the hidden long-transcript set showed. A probe that flags more than `MAX_KIND_FLAGGED` of
the negatives of any test kind with at least `MIN_KIND_EXAMPLES` examples is not shipped: its run
is kept beside the previous one (`<id>.rejected`) for inspection, the previous run and shipped
bundle stay, and the bench exits non-zero after documenting the rest.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from probewatch.training.report import OperatingSummary, TrainReport

__all__ = [
    "MAX_KIND_FLAGGED",
    "MIN_KIND_EXAMPLES",
    "REJECTED_SUFFIX",
    "discard_previous",
    "over_flagged_kinds",
    "reject",
    "set_aside",
    "ship_refusal",
]

#: the largest share of one kind's test negatives the shipped threshold may flag
MAX_KIND_FLAGGED = 0.5
#: kinds with fewer test examples are too small to judge (a couple of negatives)
MIN_KIND_EXAMPLES = 8
REJECTED_SUFFIX = ".rejected"
_PREVIOUS_SUFFIX = ".previous"


def over_flagged_kinds(
    operating: OperatingSummary, limit: float = MAX_KIND_FLAGGED, min_examples: int = MIN_KIND_EXAMPLES
) -> dict[str, float]:
    """Test kind -> share of its negatives flagged at the shipped threshold, for the kinds above `limit`."""
    return {
        kind: float(k.fpr_negatives)
        for kind, k in sorted(operating.per_kind.items())
        if k.fpr_negatives is not None and k.n >= min_examples and k.fpr_negatives > limit
    }


def ship_refusal(report: TrainReport) -> str | None:
    """Why this run's bundle must not replace the shipped one, or None when it may."""
    over = over_flagged_kinds(report.operating_point)
    if not over:
        return None
    kinds = ", ".join(f"{kind} {100 * share:.0f}%" for kind, share in over.items())
    return (
        f"its threshold {report.operating_point.threshold:.2f} flags more than {100 * MAX_KIND_FLAGGED:.0f}% "
        f"of the test negatives of {kinds}"
    )


def _run_dirs(runs_dir: Path, name: str) -> list[Path]:
    """The folders one probe's training writes: its run and, for deception, its family's (the family id rule of
    training/family_export.py, not imported: it loads torch, and this module loads with the CLI)."""
    return [runs_dir / name, runs_dir / f"{name}-family"]


def _beside(path: Path, suffix: str) -> Path:
    """`path` renamed with `suffix` in the same folder (`deception` -> `deception.rejected`)."""
    return path.with_name(path.name + suffix)


def set_aside(runs_dir: Path, name: str) -> None:
    """Move the previous run's folders out of training's way, to be restored if this run is rejected."""
    for path in _run_dirs(runs_dir, name):
        previous = _beside(path, _PREVIOUS_SUFFIX)
        shutil.rmtree(previous, ignore_errors=True)
        if path.is_dir():
            path.rename(previous)


def discard_previous(runs_dir: Path, name: str) -> None:
    """The run shipped: the set-aside previous run is no longer needed."""
    for path in _run_dirs(runs_dir, name):
        shutil.rmtree(_beside(path, _PREVIOUS_SUFFIX), ignore_errors=True)


def reject(runs_dir: Path, name: str) -> list[Path]:
    """Keep the rejected run as `<folder>.rejected` and put the previous run back; the rejected folders."""
    kept = []
    for path in _run_dirs(runs_dir, name):
        rejected = _beside(path, REJECTED_SUFFIX)
        shutil.rmtree(rejected, ignore_errors=True)
        if path.is_dir():
            path.rename(rejected)
            kept.append(rejected)
        previous = _beside(path, _PREVIOUS_SUFFIX)
        if previous.is_dir():
            previous.rename(path)
    return kept
