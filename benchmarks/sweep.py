"""`probewatch bench sweep`: the training sweep's cost on one layer, on a synthetic layer shaped like a pool.

`probewatch train` sweeps layer x method x C x aggregation, each fitted on the fit split and on every
leave-one-kind-out fold, and each fit scores every token row of the layer (training/sweep.py): on the
deception pool that was 61 of its 105 minutes. This times `sweep_layer` on one synthetic layer (random
float32 rows with a planted direction; default shape the deception pool's: 6,486 examples in 18 kinds,
~500k response rows of 576 dims, 4 Cs, logistic / mean_diff / LAT, the 8 aggregations), and the row
scoring alone: one whole-layer float64 copy and product against `features.row_scores` (blocked), in
alternating order, medians of `--reps`. No model and no data, so any machine of the same kind gives the same
numbers. `sweep_layer`, `LayerData` and `PoolArrays` are all the sweep timing uses, so the file also runs
as a script in an older checkout (`python benchmarks/sweep.py` with this file copied in; the row-scoring
part is skipped there): that is how a before / after of the sweep is measured.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

from probewatch.benchmarks.harness import add_common_args, command_line, emit, rotated, timed

DEFAULT_OUT = Path("runs/bench-sweep.json")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    add_common_args(parser)
    parser.add_argument("--examples", type=int, default=6486, help="examples in the pool (default: deception's)")
    parser.add_argument("--kinds", type=int, default=18, help="data kinds: one leave-one-kind-out fold each")
    parser.add_argument("--d-model", type=int, default=576, help="row width (default: the reference model's)")
    parser.add_argument(
        "--long-share", type=float, default=0.04, help="share of 1,000-token examples (long transcripts)"
    )
    parser.add_argument("--reps", type=int, default=3, help="timed repetitions of each part (medians reported)")
    parser.add_argument("--sweep-reps", type=int, default=1, help="timed repetitions of the whole layer sweep")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON report; default {DEFAULT_OUT}")


def synthetic_layer(n: int, kinds: int, d: int, long_share: float, seed: int = 0) -> tuple[Any, Any, Any]:
    """(LayerData, PoolArrays, control LayerData): answers of 20-60 tokens, `long_share` of 1,000, labels
    in pairs, a planted direction (so fits converge as on real data), 67% fit / 16% validation / 17% test."""
    import numpy as np

    from probewatch.training.features import LayerData
    from probewatch.training.sweep import PoolArrays

    rng = np.random.default_rng(seed)
    lengths = rng.integers(20, 60, n)
    lengths[rng.random(n) < long_share] = 1000
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    labels = np.arange(n) % 2
    direction = rng.normal(size=d).astype(np.float32)
    rows = rng.normal(size=(int(offsets[-1]), d)).astype(np.float32)
    rows += 0.05 * np.repeat(labels, lengths)[:, None].astype(np.float32) * direction
    data = LayerData(0, rows, offsets, rng.normal(size=(n, d)).astype(np.float32))
    order = rng.permutation(n // 2)  # whole pairs to a split
    fit, val = np.sort(order[: int(0.67 * len(order))]), np.sort(order[int(0.67 * len(order)) : int(0.83 * len(order))])
    test = np.sort(order[int(0.83 * len(order)) :])
    pairs = np.arange(n) // 2

    def members(p: Any) -> Any:
        return np.flatnonzero(np.isin(pairs, p))

    pool = PoolArrays(
        labels, pairs, np.array([f"kind{p % kinds}" for p in pairs]), members(fit), members(val), members(test)
    )
    c_len = rng.integers(20, 80, 336)
    c_off = np.concatenate([[0], np.cumsum(c_len)]).astype(np.int64)
    control = LayerData(
        0, rng.normal(size=(int(c_off[-1]), d)).astype(np.float32), c_off, rng.normal(size=(336, d)).astype(np.float32)
    )
    return data, pool, control


def _row_scoring(data: Any, reps: int) -> dict[str, Any] | None:
    """Whole-layer float64 product vs `features.row_scores`, alternating; None on a checkout without it."""
    import numpy as np

    try:
        from probewatch.training.features import row_scores
    except ImportError:
        return None
    w = np.random.default_rng(1).normal(size=data.rows.shape[1])
    parts = {
        "whole_matrix": lambda: data.rows.astype(np.float64) @ w + 0.1,
        "blocked": lambda: row_scores(w, 0.1, data, "response"),
    }
    times: dict[str, list[float]] = {k: [] for k in parts}
    for rep in range(reps):
        for name in rotated(list(parts), rep):
            times[name].append(timed(parts[name]))
    gap = float(np.max(np.abs(parts["whole_matrix"]() - parts["blocked"]())))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"median_s": med, "speedup": med["whole_matrix"] / med["blocked"], "max_abs_difference": gap}


def main(args: argparse.Namespace) -> int:
    from probewatch.probes.manifest import AGGREGATIONS, ATTENTION, Aggregation
    from probewatch.training.sweep import sweep_layer
    from probewatch.training.train_config import HELDOUT_CS

    data, pool, control = synthetic_layer(args.examples, args.kinds, args.d_model, args.long_share)
    # every aggregation a linear probe is swept with (the deception pool sweeps all of them), at the default C grid
    aggregations = [Aggregation(method=m, window=8, alpha=0.2) for m in AGGREGATIONS if m != ATTENTION]
    n_rows = []

    def sweep() -> None:
        rows = sweep_layer(
            data, {}, pool, "response", ["logistic", "mean_diff", "lat"], aggregations, False, 0, True,
            control=control, Cs=list(HELDOUT_CS),
        )  # fmt: skip
        n_rows.append(len(rows))

    sweep_s = [timed(sweep) for _ in range(max(1, args.sweep_reps))]
    rows = _row_scoring(data, max(1, args.reps))
    result = {
        "command": command_line("sweep"),
        "shape": {"examples": args.examples, "kinds": args.kinds, "rows": int(len(data.rows)), "d": args.d_model},
        "sweep_layer_s": sweep_s,
        "sweep_layer_median_s": statistics.median(sweep_s),
        "configurations": n_rows[0],
        "row_scoring": rows,
    }
    lines = [
        f"synthetic layer: {args.examples} examples, {args.kinds} kinds, {len(data.rows)} rows x {args.d_model}",
        f"sweep_layer (response, {n_rows[0]} configurations): median {result['sweep_layer_median_s']:.1f} s",
    ]
    if rows is not None:
        med = rows["median_s"]
        lines.append(
            f"row scoring: whole matrix {med['whole_matrix']:.3f} s, blocked {med['blocked']:.3f} s "
            f"({rows['speedup']:.1f}x; max |difference| {rows['max_abs_difference']:.1e})"
        )
    emit(result, args.json, lines, args.out)
    return 0


if __name__ == "__main__":  # an older checkout has no `bench sweep` subcommand: run the file itself
    _parser = argparse.ArgumentParser(prog="benchmarks/sweep.py", description=__doc__.splitlines()[0])
    add_cli_args(_parser)
    raise SystemExit(main(_parser.parse_args()))
