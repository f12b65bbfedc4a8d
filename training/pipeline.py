"""`probewatch train`: data -> activations -> splits -> sweep -> fit -> bundle + report.

`train` runs six stage functions; each returns a typed result the next one reads (and each is
cached or cheap to redo):

1. `prepare_data` -> `PreparedData`: the behaviour's builder (or the user's JSONL files) and the
   production-like control set (both with the model's own responses, cached);
2. `extract` -> `Activations`: the sweep layers for pool (kind by kind), out-of-distribution
   sets and control (cached shards, one layer in memory at a time);
3. `make_splits` -> `Splits`: fit / calibration (validation) / test of the pool, by group, and the
   calibration / held-out halves of the control set, by kind;
4. `run_sweep` -> `SweepOutcome`: layer x method x (C) x token selection x aggregation, scored on
   validation, leave-one-kind-out and out-of-distribution sets; chosen by held-out kind when the
   pool has kinds; plus the multi-layer comparison;
4b. `run_sources` -> `SourceOutcome` (`stage_sources`): with two or more data sources
   (`training/sources.py`), the configuration is re-chosen by held-out source (worst source
   first) among the sweep's top `nested_top_k`, and the nested source-held-out estimate of that
   procedure is measured (`training/nested.py`); `report.sources` also gets the shipped
   threshold's recall and flagged negatives per source;
5. `fit_final` -> `FittedProbe`: the chosen configuration fitted on the fit split, Platt-scaled on
   the calibration split (scores become calibrated logits), thresholded at the operating point
   (`calibration.operating_point`: at most `fpr` of the control set and at most
   `hard_negative_fpr` of the behaviour's own calibration negatives), and measured on the test
   split, the held-out control half (per kind), every held-out kind and the OOD sets;
6. `export` -> `TrainResult`: bundle + report.json (a `TrainReport`) + plots in `--out`; a parity
   check scores a few test dialogues through `probewatch.scoring.score_dialogues` (the live path)
   and compares with the cached scores.

Each stage lives in its own module (`train_config`, `stage_data`, `stage_activations` (stages 2
and 3), `stage_sweep`, `stage_fit`, `stage_export`); this module runs them in order and keeps the
public names importable from `probewatch.training.pipeline`.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from probewatch.training.compare import TEST_SET, compare_bundle, pool_signature
from probewatch.training.export import check_target
from probewatch.training.multilayer import choose_layers
from probewatch.training.stage_activations import Activations, Splits, extract, make_splits
from probewatch.training.stage_data import PreparedData, prepare_data
from probewatch.training.stage_export import TrainResult, export, kinds_summary
from probewatch.training.stage_fit import FittedProbe, fit_final, operating_summary
from probewatch.training.stage_sources import SourceOutcome, concat_check, run_sources, sources_report
from probewatch.training.stage_sweep import SweepOutcome, run_sweep
from probewatch.training.train_config import (
    DEFAULT_IDS,
    DEFAULT_METHODS,
    HELDOUT_CS,
    METHODS,
    RESPONDING_BEHAVIOURS,
    RESPONSE_BEHAVIOURS,
    TrainConfig,
    TrainingError,
    apply_init_from,
    check_config,
    default_layers,
    default_out,
    default_probe_id,
    resolve_augment,
)

__all__ = [
    "DEFAULT_IDS",
    "HELDOUT_CS",
    "DEFAULT_METHODS",
    "METHODS",
    "RESPONDING_BEHAVIOURS",
    "RESPONSE_BEHAVIOURS",
    "Activations",
    "FittedProbe",
    "PreparedData",
    "SourceOutcome",
    "Splits",
    "SweepOutcome",
    "TrainConfig",
    "TrainResult",
    "TrainingError",
    "apply_init_from",
    "check_config",
    "default_layers",
    "export",
    "extract",
    "fit_final",
    "make_splits",
    "operating_summary",
    "prepare_data",
    "run_sources",
    "run_sweep",
    "train",
]


def train(config: TrainConfig, loaded: Any = None) -> TrainResult:
    """Run the six stages; returns the bundle path and the report."""
    from probewatch.models import load_model

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    loaded = loaded or load_model(config.model)
    provenance_extra = apply_init_from(config, loaded.fingerprint) if config.init_from else {}
    layers = check_config(config, loaded.n_layers, loaded.model_id)
    config.augment = resolve_augment(config)  # report.json records what was applied, not "the default"
    probe_id = config.probe_id or default_probe_id(config)
    out = Path(config.out) if config.out else default_out(loaded.model_id, probe_id)
    check_target(out, loaded.fingerprint, overwrite_other_model=config.force)

    def timed(name: str, fn, *args):
        t = time.perf_counter()
        result = fn(*args)
        timings[name] = time.perf_counter() - t
        return result

    prepared = timed("data_s", prepare_data, config, loaded)
    acts = timed("extract_s", extract, config, loaded, prepared, layers)
    splits = make_splits(config, acts, prepared.data)
    sweep = timed("sweep_s", run_sweep, config, prepared, acts, splits, layers)
    by_source = timed("sources_s", run_sources, config, acts, splits, sweep)  # may re-choose sweep.chosen
    cached = acts  # the per-layer cache: --compare-with bundles read their own layers from it
    # concat of several layers only where it clearly wins, on held-out sources too where they chose the single probe
    acts, probe_layers = choose_layers(sweep, acts, concat_check(config, acts, splits, by_source))
    transfer = by_source.nested.transfer_fpr if by_source.nested is not None else None
    fitted = timed("final_s", fit_final, config, acts, splits, sweep, prepared.data, transfer)
    this_run = {TEST_SET: fitted.scores[splits.pool.test_idx], **fitted.ood_scores}
    this_pool = pool_signature(
        {k: asdict(v) for k, v in kinds_summary(prepared.data.pool).items()}, len(splits.pool.test_idx)
    )
    compared = [
        compare_bundle(p, cached, splits, loaded.fingerprint, this_run, this_pool).to_json()
        for p in config.compare_with
    ]
    result = export(
        config, loaded, prepared, acts, splits, sweep, fitted, out, probe_id, timings, provenance_extra, probe_layers
    )
    result.report.sources = sources_report(splits, by_source, fitted)
    result.report.compared = compared or None
    if config.family:  # per-type probes alerting on their maximum, beside the single probe (family_export.py)
        from probewatch.training.family_export import train_family

        timed("family_s", train_family, config, loaded, acts, splits, sweep, fitted, out, probe_id,
              prepared.control_source.name, probe_layers)  # fmt: skip
    timings["total_s"] = time.perf_counter() - t0
    result.report.write(result.report_path)
    return result
