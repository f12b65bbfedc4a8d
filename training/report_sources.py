"""The `sources` part of report.json: per-source counts, the choice by held-out source, the nested
estimate and the shipped threshold per source (issue 22). Plain dataclasses; `SourcesReport.from_json`
reads what `asdict` writes (`TrainReport` omits the whole part when a run has none).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from probewatch.training.sources import SourceAtThreshold, SourceCounts

#: the selection guard: a candidate is eligible only if its validation AUROC is within this of the best candidate's
VAL_MARGIN = 0.10


def rule_text(margin: float = VAL_MARGIN) -> str:
    """The selection rule as reports and docs/quality.md state it, with the guard's margin in effect."""
    guard = (
        ""
        if margin == float("inf")
        else f"among configurations whose validation AUROC is within {margin:.2f} of the best candidate's, "
    )
    return (
        f"{guard}rank by the worst held-out fold (source; kind where fewer than two sources remain; a quarter of the groups "
        "where one source of one kind remains); "
        "worst scores within 0.01 of the best worst count as ties, broken by the mean over folds, then by recall "
        "at 1% control FPR, validation AUROC and the earlier layer"
    )


#: the selection rule with the default guard
RULE = rule_text()


@dataclass
class ConfigScore:
    """One configuration (token selection, layer, method, C, training mode, aggregation) on a set of folds."""

    config: dict[str, Any]
    mean: float | None
    worst: float | None
    folds: dict[str, float] = field(default_factory=dict)  # fold (held-out source or kind) -> AUROC


@dataclass
class SourceSelection:
    """The selection rule run on one set of held-out folds."""

    basis: str  # heldout_source | heldout_kind | heldout_group | prescreen (no fold could be scored)
    folds: list[str]
    n_configurations: int  # compared on the folds: the pre-screen's top k, then each missing method's best
    chosen: ConfigScore
    mean_best: ConfigScore  # what ranking by the mean alone would have chosen (among the eligible)
    #: configurations the guard left eligible (validation AUROC near the best candidate's); None: before the guard
    n_eligible: int | None = None
    #: what the rule would have chosen without the guard, where that differs from `chosen`
    unguarded: ConfigScore | None = None

    @property
    def rule_changed_choice(self) -> bool:
        return self.chosen.config != self.mean_best.config

    @property
    def guard_changed_choice(self) -> bool:
        return self.unguarded is not None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SourceSelection:
        unguarded = d.get("unguarded")
        return cls(
            basis=d["basis"],
            folds=list(d["folds"]),
            n_configurations=d["n_configurations"],
            chosen=ConfigScore(**d["chosen"]),
            mean_best=ConfigScore(**d["mean_best"]),
            n_eligible=d.get("n_eligible"),
            unguarded=None if unguarded is None else ConfigScore(**unguarded),
        )


@dataclass
class HeldOutThreshold:
    """An outer fold's probe at a threshold set as the shipped one is (control calibration half at `fpr`,
    the remaining sources' calibration negatives at the hard-negative rate), on the held-out source."""

    threshold: float
    set_by: str
    recall: float | None
    fpr_negatives: float | None
    fpr_control_heldout: float
    # the calibration-negatives rate the threshold may flag so that it holds on this source
    # (calibration.transfer_rate; None: too few negatives, or a report written before it)
    transfer_rate: float | None = None
    # the transfer limit learnt from the *other* sources' rates, applied here: does it transfer?
    transfer: TransferCheck | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HeldOutThreshold:
        check = d.get("transfer")
        return cls(**{**d, "transfer": None if check is None else TransferCheck(**check)})


@dataclass
class TransferCheck:
    """The transfer limit (`calibration.operating_point`'s `transfer_fpr`) learnt without one source (the
    lowest rate the other sources asked for) and measured on it, as `HeldOutThreshold` measures the plain rule."""

    rate: float | None  # None: no other source asked for one (the plain threshold above applies)
    threshold: float
    recall: float | None
    fpr_negatives: float | None
    fpr_control_heldout: float


@dataclass
class OuterSource:
    """One held-out source: the configuration chosen without it, and what it scores on it."""

    selection: SourceSelection
    against: str  # own_negatives | control (a source with positives only)
    n_pos: int
    n_neg: int
    auroc: float | None
    gap: float | None  # selection.chosen.mean (selected-on) - auroc (reported-on)
    at_threshold: HeldOutThreshold | None
    #: the held-out AUROC of every choice the rule counted as tied with the chosen one (`nested.tied_rows`,
    #: sorted, the chosen one among them); None: no tie, or a report written before ties were recorded
    tied: list[float] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OuterSource:
        return cls(
            selection=SourceSelection.from_json(d["selection"]),
            against=d["against"],
            n_pos=d["n_pos"],
            n_neg=d["n_neg"],
            auroc=d["auroc"],
            gap=d["gap"],
            at_threshold=None if d["at_threshold"] is None else HeldOutThreshold.from_json(d["at_threshold"]),
            tied=d.get("tied"),
        )


@dataclass
class OuterMultiLayer:
    """The multi-layer step for one held-out source, decided without it (training/nested_multilayer.py)."""

    single_auroc: float | None  # the single-layer choice's AUROC on the source (`OuterSource.auroc`)
    kind_gate: bool  # `multilayer.ship_concat` on the held-out kinds of the other sources
    #: the single-layer choice and the concat on the inner folds (None: the kind gate kept the single layer,
    #: or no inner fold could be scored and the kind gate decided alone)
    single: ConfigScore | None
    concat: ConfigScore | None
    ships: bool
    auroc: float | None  # the probe the procedure ships without the source, on it: the concat's where it ships
    #: the layer set the forward search found without the source (one layer: it added none); None in a step
    #: recorded before the search ran per source, which judged the run's set (`NestedMultiLayer.layers`)
    layers: list[int] | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OuterMultiLayer:
        return cls(
            **{
                **d,
                "single": None if d["single"] is None else ConfigScore(**d["single"]),
                "concat": None if d["concat"] is None else ConfigScore(**d["concat"]),
            }
        )


@dataclass
class NestedMultiLayer:
    """The nested estimate with the multi-layer step: per outer source, the layer set searched without it, whether
    it would ship without the source, and what the probe so chosen scores on it."""

    layers: list[int]  # the run's set (what ships where the concat shipped)
    outer: dict[str, OuterMultiLayer]
    mean: float | None
    worst: float | None
    worst_source: str | None
    change: float | None  # mean - the single-layer nested mean (`NestedEstimate.mean`)
    #: the command that added it to a report written before the step existed (`probewatch bench selection
    #: --nested --record`); None where the run computed it
    replayed_by: str | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NestedMultiLayer:
        return cls(**{**d, "outer": {k: OuterMultiLayer.from_json(v) for k, v in d["outer"].items()}})


@dataclass
class ReplayedSource:
    """One held-out source in a replay that departs from the run: the configuration today's code chooses without
    it and that configuration's AUROC on it."""

    config: dict[str, Any]
    auroc: float | None
    tied: list[float] | None = None  # the held-out AUROCs of the choices the rule counted as tied (`OuterSource.tied`)


@dataclass
class ReplayedEstimate:
    """The nested estimate replayed after the run where it no longer reproduces the run's (`probewatch bench
    selection --nested --record`, training/replay.py `record_replay_drift`): the data code or the pool changed
    since and the bundle was not retrained. The run's numbers still describe how the shipped probe was chosen;
    these say what the same procedure estimates on today's pool, so docs/quality.md shows both."""

    by: str  # the command that replayed it
    on: str  # the replay's date (UTC, YYYY-MM-DD)
    differences: list[str]  # where it departs from the run: a source's choice or AUROC, or the shipped choice
    outer: dict[str, ReplayedSource]
    mean: float | None
    worst: float | None
    worst_source: str | None
    multi_layer_mean: float | None  # with the multi-layer step (None: the run compared no multi-layer probe)
    #: the mean had every tie gone the worst / best way (`NestedEstimate.tie_range`)
    tie_range: list[float] | None = None
    #: the replay's multi-layer step in full: each source's searched layer set, gates and AUROC (None: no step,
    #: or a record written before it kept only `multi_layer_mean`)
    multi_layer: NestedMultiLayer | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReplayedEstimate:
        multi = d.get("multi_layer")
        return cls(
            **{
                **d,
                "outer": {k: ReplayedSource(**v) for k, v in d["outer"].items()},
                "multi_layer": None if multi is None else NestedMultiLayer.from_json(multi),
            }
        )


@dataclass
class NestedEstimate:
    """Per outer source, the selection run on the other sources and scored on it; the summary numbers.

    `optimism_gap` = `selected_on` (the shipped configuration's own selection number) - `mean` (the
    nested held-out-source AUROC); `mean_inner_gap` = the mean over outer sources of their `gap`."""

    rule: str
    top_k: int
    outer: dict[str, OuterSource]
    mean: float | None
    worst: float | None
    worst_source: str | None
    selected_on: float | None
    selected_on_basis: str
    heldout_kind_selected_on: float | None  # the sweep's held-out-kind number of its own choice
    optimism_gap: float | None
    mean_inner_gap: float | None
    # the lowest `transfer_rate` of the outer sources, below the hard-negative rate: the shipped threshold's
    # transfer limit (None: every source held, or a report written before it)
    transfer_fpr: float | None = None
    #: [low, high]: the mean over sources of the lowest / highest held-out AUROC among each source's tied choices
    #: (its own AUROC where none tied): the estimate had every tie gone the worst / best way (None: no tie)
    tie_range: list[float] | None = None
    #: the command that added `tie_range` and the sources' `tied` to a report written before them
    ties_replayed_by: str | None = None
    #: the same estimate with the multi-layer step (None: the run compared no multi-layer probe, or a report
    #: written before the step)
    multi_layer: NestedMultiLayer | None = None
    #: a later replay that no longer reproduces this estimate (None: none recorded, or the last one reproduced it)
    replayed: ReplayedEstimate | None = None

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> NestedEstimate:
        multi, replayed = d.get("multi_layer"), d.get("replayed")
        return cls(
            **{
                **d,
                "outer": {k: OuterSource.from_json(v) for k, v in d["outer"].items()},
                "multi_layer": None if multi is None else NestedMultiLayer.from_json(multi),
                "replayed": None if replayed is None else ReplayedEstimate.from_json(replayed),
            }
        )


def omit_unset(d: dict[str, Any], keys: Iterable[str]) -> None:
    """Remove, in place, those of `keys` that `d` holds as None: a field added to a report later is left out
    where a run did not set it, so a report written before it existed reads back byte for byte."""
    for key in keys:
        if key in d and d[key] is None:
            del d[key]


#: SourceSelection fields added later (the guard): omitted where unset
SELECTION_LATER = ("n_eligible", "unguarded")


def drop_unset(sources: dict[str, Any]) -> None:
    """`omit_unset` for the fields added after the first reports: the selection guard's (the shipped choice and
    each outer source's), the transfer fields and the multi-layer step of an `asdict`-written nested estimate."""
    omit_unset(sources.get("selection") or {}, SELECTION_LATER)
    nested = sources.get("nested")
    if nested is None:
        return
    omit_unset(nested, ("transfer_fpr", "tie_range", "ties_replayed_by", "multi_layer", "replayed"))
    steps = [nested.get("multi_layer"), (nested.get("replayed") or {}).get("multi_layer")]
    if nested.get("replayed") is not None:
        omit_unset(nested["replayed"], ("multi_layer",))
    for step in (s for s in steps if s is not None):
        omit_unset(step, ("replayed_by",))
        for outer in step["outer"].values():
            omit_unset(outer, ("layers",))
    for outer in nested["outer"].values():
        omit_unset(outer.get("selection") or {}, SELECTION_LATER)
        omit_unset(outer.get("at_threshold") or {}, ("transfer_rate", "transfer"))
        omit_unset(outer, ("tied",))


@dataclass
class SourcesReport:
    """report.json `sources`: the mapping in effect, counts, the held-out-source choice, the nested estimate
    and, per source, the shipped probe at the shipped threshold on the test split."""

    mapping: dict[str, str]  # the pool's kinds -> source
    counts: dict[str, SourceCounts]
    selection: SourceSelection | None  # the shipped choice by held-out source (None: the sweep's basis chose)
    nested: NestedEstimate | None
    at_threshold: dict[str, SourceAtThreshold]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SourcesReport:
        return cls(
            mapping=dict(d["mapping"]),
            counts={k: SourceCounts(**v) for k, v in d["counts"].items()},
            selection=None if d["selection"] is None else SourceSelection.from_json(d["selection"]),
            nested=None if d["nested"] is None else NestedEstimate.from_json(d["nested"]),
            at_threshold={k: SourceAtThreshold(**v) for k, v in d["at_threshold"].items()},
        )
