"""Re-run a report's held-out-source choice with the selection code as it is now (issue 22).

A change to the selection rule, the guard or the pre-screen changes what the next `make bench-quality`
ships, but the shipped bundles and docs/quality.md still show the choices of the run that made them.
Replaying answers "would today's code choose the same?" without a retrain: the report's `config`
rebuilds the pool (data, splits, activations: all cached by a previous run), its `sweep` rows are the
candidates, and `nested.select_by_source` (optionally `nested_estimate`) runs on them; where the run compared a
multi-layer probe, the multi-layer decision is replayed on today's choice as well (`multilayer.choose_layers`).
`probewatch bench selection` is the command (benchmarks/selection.py).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probewatch.training.multilayer import concat_decision
from probewatch.training.multilayer_sources import REPLAYED_BY, SourceCheck, concat_on_sources
from probewatch.training.nested import FoldScorer, config_of, nested_estimate, select_by_source
from probewatch.training.nested_multilayer import multilayer_step
from probewatch.training.report_sources import (
    ConfigScore,
    NestedEstimate,
    ReplayedEstimate,
    ReplayedSource,
    SourceSelection,
    omit_unset,
)
from probewatch.training.stage_activations import extract, make_splits
from probewatch.training.stage_data import prepare_data
from probewatch.training.stage_sources import pool_and_control, settings_of
from probewatch.training.sweep import SweepRow
from probewatch.training.train_config import TrainConfig, check_config

__all__ = [
    "Replay",
    "replay_selection",
    "record_concat_check",
    "record_nested_additions",
    "record_replay_drift",
    "config_from_report",
    "require_model",
]


@dataclass
class Replay:
    """One report's recorded choice beside today's, on the same candidates and pool."""

    probe_id: str
    recorded: ConfigScore | None  # the report's held-out-source choice (None: the sweep's basis chose)
    now: SourceSelection | None  # None: fewer than two evaluable sources
    nested: NestedEstimate | None = None
    #: the multi-layer decision: whether the run shipped its concat, whether today's rule would, and the
    #: concat on the held-out-source folds (None: no comparison recorded, or no source choice to judge it by)
    concat_recorded: bool | None = None
    concat_now: bool | None = None
    concat_check: SourceCheck | None = None

    @property
    def changed(self) -> bool:
        if self.concat_recorded is not None and self.concat_recorded != self.concat_now:
            return True
        if self.recorded is None or self.now is None:
            return (self.recorded is None) != (self.now is None)  # one side chose by held-out source, one did not
        return self.recorded.config != self.now.chosen.config


def config_from_report(report: dict[str, Any], data_dir: str | Path | None = None) -> TrainConfig:
    """The run's TrainConfig as recorded, writing nothing: no bundle, plots, comparison or progress bars."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    recorded = {k: v for k, v in report["config"].items() if k in names}
    recorded.update(out=None, compare_with=[], plots=False, progress=False)
    if "selection_margin" in recorded and recorded["selection_margin"] is None:
        recorded["selection_margin"] = math.inf  # `--selection-margin inf`: JSON has no Infinity (jsonio writes null)
    recorded.setdefault("augment", ())  # runs before training/augment.py added no copies
    if data_dir is not None:
        recorded["data_dir"] = data_dir
    return TrainConfig(**recorded)


def require_model(report: dict[str, Any], loaded: Any) -> None:
    """Raises ValueError unless `loaded` is the model the report's run trained on (its activations, its scores)."""
    if loaded.fingerprint != report["model"]["fingerprint"]:
        raise ValueError(
            f"report {report['probe_id']!r} was trained on {report['model']['fingerprint']}, "
            f"not on the loaded model {loaded.fingerprint}"
        )


def _rows(report: dict[str, Any]) -> list[SweepRow]:
    names = {f.name for f in dataclasses.fields(SweepRow)}
    return [SweepRow(**{k: v for k, v in row.items() if k in names}) for row in report["sweep"]]


def replay_selection(
    report: dict[str, Any],
    loaded: Any,
    data_dir: str | Path | None = None,
    nested: bool = False,
    margin: float | None = None,
) -> Replay:
    """Today's held-out-source choice (and with `nested` the nested estimate) for a report.json's pool and
    sweep rows; `margin` replaces the run's guard (`--selection-margin`). `loaded` must be the report's model:
    the activations are recomputed or read from the cache."""
    require_model(report, loaded)
    config = config_from_report(report, data_dir)
    if margin is not None:
        config.selection_margin = margin
    prepared = prepare_data(config, loaded)
    acts = extract(config, loaded, prepared, check_config(config, loaded.n_layers, loaded.model_id))
    splits = make_splits(config, acts, prepared.data)
    rows = _rows(report)

    layer_data = pool_and_control(acts)
    sources = report.get("sources") or {}
    recorded = (sources.get("selection") or {}).get("chosen")
    settings = settings_of(config)
    scorer = FoldScorer(splits.pool, layer_data, settings)
    picked = select_by_source(rows, splits.pool, layer_data, splits.control_cal, settings, scorer)
    now = picked[1] if picked is not None else None
    estimate = None
    multi = report.get("multi_layer")
    if nested and now is not None:
        estimate = nested_estimate(
            rows,
            splits.pool,
            layer_data,
            splits.control_cal,
            splits.control_held,
            settings,
            (now.chosen.mean, "heldout_source"),
            None,
            scorer,
        )
        if estimate is not None:
            estimate.multi_layer = multilayer_step(
                multi,
                rows,
                estimate,
                splits.pool,
                layer_data,
                splits.control_cal,
                splits.control_held,
                settings,
                max_layers=config.multi_layer,
            )
    replay = Replay(report["probe_id"], None if recorded is None else ConfigScore(**recorded), now, estimate)
    if multi and now is not None:
        chosen = next((r for r in rows if config_of(r) == now.chosen.config), None)
        if chosen is not None:  # the multi-layer decision on today's choice, as `multilayer.choose_layers` makes it

            def on_sources(multi: Any, chosen: SweepRow) -> SourceCheck | None:
                return concat_on_sources(multi, chosen, splits.pool, layer_data, splits.control_cal, settings)

            replay.concat_recorded = bool(multi.get("shipped"))
            replay.concat_now, replay.concat_check = concat_decision(multi, chosen, on_sources)
    return replay


def record_concat_check(report: dict[str, Any], replay: Replay, by: str) -> bool:
    """Write the replay's multi-layer check into `report["multi_layer"]["heldout_source"]` where the run that
    wrote the report predates the check, naming `by` beside it; True where it wrote.

    A report shows the choices of the run that made the shipped bundle, so only a replay that agrees with it
    (same single-layer choice, same multi-layer decision) may fill the gap: the check then explains the
    shipped probe. A replay that disagrees is refused (regenerate with `probewatch bench quality` instead);
    a report whose run made the check itself keeps its own."""
    multi = report.get("multi_layer")
    if not multi or replay.concat_check is None or "heldout_source" in multi:
        return False
    _require_agreement(replay, "check")
    multi["heldout_source"] = replay.concat_check.to_json()
    multi[REPLAYED_BY] = by
    return True


def record_nested_additions(report: dict[str, Any], replay: Replay, by: str) -> bool:
    """Write what the nested estimate gained after the run that wrote the report into its
    `report["sources"]["nested"]`: the multi-layer step (`multi_layer`, with `replayed_by` = `by`) and the
    tied choices' held-out AUROCs (each outer source's `tied`, the estimate's `tie_range`, and
    `ties_replayed_by`); True where it wrote. Each is written only where the report lacks it (a step an
    earlier replay recorded before the layer set was searched per source counts as lacking: `_step_missing`).

    As `record_concat_check`: only a replay that chooses as the run did may fill a gap, and its single-layer
    estimate must be the report's own: the same configuration chosen without every source, each scoring that
    source within `REPLAY_TOLERANCE` of the record (fits repeated on another machine or thread count move an
    AUROC by a few pairs, never a choice), so the additions extend the published estimate rather than another."""
    nested = (report.get("sources") or {}).get("nested")
    now = replay.nested
    if nested is None or now is None:
        return False
    step = now.multi_layer if _step_missing(nested.get("multi_layer")) else None
    has_ties = "tie_range" in nested or any("tied" in o for o in nested["outer"].values())
    ties = now.tie_range is not None and not has_ties
    if step is None and not ties:
        return False
    _require_agreement(replay, "nested estimate")
    differs = _estimate_differences(nested, now)
    if differs:
        raise ValueError(
            f"report {replay.probe_id!r}: the replayed nested estimate is not the run's ({'; '.join(differs)}), "
            "so what it adds would extend another estimate; regenerate it with `probewatch bench quality`"
        )
    if step is not None:
        nested["multi_layer"] = {**dataclasses.asdict(step), "replayed_by": by}
    if ties:
        for name, outer in now.outer.items():
            if outer.tied is not None:
                nested["outer"][name]["tied"] = outer.tied
        nested["tie_range"] = now.tie_range
        nested["ties_replayed_by"] = by
    return True


def _step_missing(recorded: dict[str, Any] | None) -> bool:
    """True where a report lacks the nested multi-layer step, or holds one an earlier replay recorded before the
    step searched the layer set per source (its outer sources name no `layers`): a replay wrote it, so a replay
    of today's step may replace it. A step the run computed stays: it is how that run decided."""
    if recorded is None:
        return True
    return bool(recorded.get("replayed_by")) and any("layers" not in o for o in recorded["outer"].values())


def record_replay_drift(report: dict[str, Any], replay: Replay, by: str, on: str) -> str | None:
    """Keep `report["sources"]["nested"]["replayed"]` true to today's replay: where the replayed nested estimate
    departs from the run's (a source's choice, an AUROC beyond `REPLAY_TOLERANCE`, or the shipped choice itself),
    write what the replay estimates (`ReplayedEstimate`, with the command `by` and the date `on`) and return
    "recorded"; where it reproduces the run's, drop an older record ("cleared"); None where nothing changed.

    The run's estimate stays as it was: it is how the shipped probe was chosen. A replay that departs cannot
    extend it (`record_nested_additions` refuses), but what it measured on today's pool is a number a reader
    needs beside the published one until a regeneration replaces both."""
    nested = (report.get("sources") or {}).get("nested")
    now = replay.nested
    if nested is None or now is None:
        return None
    differs = _estimate_differences(nested, now)
    if replay.changed:
        differs.insert(0, "the shipped choice: today's selection code chooses differently from the run")
    if not differs:
        return "cleared" if nested.pop("replayed", None) is not None else None
    record = ReplayedEstimate(
        by=by,
        on=on,
        differences=differs,
        outer={name: ReplayedSource(o.selection.chosen.config, o.auroc, o.tied) for name, o in now.outer.items()},
        mean=now.mean,
        worst=now.worst,
        worst_source=now.worst_source,
        multi_layer_mean=None if now.multi_layer is None else now.multi_layer.mean,
        tie_range=now.tie_range,
        multi_layer=now.multi_layer,
    )
    written = dataclasses.asdict(record)
    if written["multi_layer"] is not None:
        omit_unset(written["multi_layer"], ("replayed_by",))  # it is the replay's, which `by` names already
    nested["replayed"] = written
    return "recorded"


#: how far a replayed outer source's AUROC may lie from the record and still count as the same estimate
REPLAY_TOLERANCE = 1e-3


def _estimate_differences(recorded: dict[str, Any], now: NestedEstimate) -> list[str]:
    """Where a replayed nested estimate departs from a recorded one: 'liar_detector: chose <config> (the run:
    <config>)' or 'truth_statements: 0.7297 (the run: 0.7330)'; empty where they are the same estimate."""
    out = []
    for name, o in recorded["outer"].items():
        again = now.outer.get(name)
        if again is None:
            out.append(f"{name}: not held out now")
        elif again.selection.chosen.config != o["selection"]["chosen"]["config"]:
            out.append(f"{name}: chose {again.selection.chosen.config} (the run: {o['selection']['chosen']['config']})")
        elif (again.auroc is None) != (o["auroc"] is None) or (
            again.auroc is not None and abs(again.auroc - o["auroc"]) > REPLAY_TOLERANCE
        ):
            out.append(f"{name}: {again.auroc} (the run: {o['auroc']})")
    out += [f"{name}: not held out by the run" for name in now.outer if name not in recorded["outer"]]
    return out


def _require_agreement(replay: Replay, what: str) -> None:
    if replay.changed:
        raise ValueError(
            f"report {replay.probe_id!r}: today's selection code chooses differently from the run "
            f"(see `probewatch bench selection`), so its {what} would not describe the shipped probe; "
            "regenerate it with `probewatch bench quality` instead of recording"
        )
