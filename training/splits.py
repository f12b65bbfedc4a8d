"""Grouped splits: no source item (statement, scenario, request) on both sides of a split.

`grouped_split` is the in-distribution held-out split (GroupShuffleSplit, retried until both
sides hold both classes); `leave_one_kind_out` holds out whole data kinds, the number that says
whether a probe generalises to kinds of the behaviour it never saw.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from probewatch.errors import ProbewatchError


class SplitError(ProbewatchError):
    """The data cannot be split as asked (too few groups, one class only)."""


def grouped_split(
    groups: np.ndarray, labels: np.ndarray, test_size: float, seed: int = 0, idx: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(train, test) indices (into the full arrays) with disjoint groups and both classes on each side."""
    from sklearn.model_selection import GroupShuffleSplit

    idx = np.arange(len(labels)) if idx is None else np.asarray(idx)
    g, y = np.asarray(groups)[idx], np.asarray(labels)[idx]
    if len(np.unique(g)) < 2:
        raise SplitError(f"a grouped split needs at least 2 groups; got {len(np.unique(g))}")
    for attempt in range(50):
        splitter = GroupShuffleSplit(n_splits=1, test_size=test_size, random_state=seed + attempt)
        tr, te = next(splitter.split(np.zeros(len(y)), y, g))
        if len(np.unique(y[tr])) == 2 and len(np.unique(y[te])) == 2:
            return idx[tr], idx[te]
    raise SplitError("could not find a grouped split with both classes on both sides (too few groups per class?)")


def leave_one_kind_out(
    kinds: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    idx: np.ndarray | None = None,
    exclude: tuple[str, ...] = (),
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, train, test) for every kind with both classes whose complement also has both.

    Examples of the training side that share a group with the held-out kind are dropped too.
    Kinds in `exclude` (auxiliary training-only data) are never held out, only trained on.
    """
    idx = np.arange(len(labels)) if idx is None else np.asarray(idx)
    k, y, g = np.asarray(kinds)[idx], np.asarray(labels)[idx], np.asarray(groups)[idx]
    for kind in sorted(set(k.tolist()) - set(exclude)):
        test = k == kind
        held_groups = set(g[test].tolist())
        train = ~test & ~np.isin(g, list(held_groups))
        if len(np.unique(y[test])) == 2 and len(np.unique(y[train])) == 2:
            yield kind, idx[train], idx[test]


def check_disjoint(groups: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Raise if a group appears on both sides (a guard the pipeline runs on every split)."""
    shared = set(np.asarray(groups)[a].tolist()) & set(np.asarray(groups)[b].tolist())
    if shared:
        raise SplitError(f"{len(shared)} groups on both sides of a split, e.g. {sorted(shared)[:3]}")
