"""`TrainReport`: the typed training report, written as `report.json` next to a trained bundle.

`probewatch train` builds it (`training/stage_export.py`), `docs/quality.md` is rendered from it
(`training/quality_doc.py`) and `probewatch bench quality` collects it. On disk it is plain JSON
whose keys and order are part of the contract (users and the shipped bundles' reports read it):
`to_json` writes the fields in declaration order, exactly the layout the untyped dict had, and
`from_json` reads such a file back (`from_json(r).to_json() == r`).

Parts that are passed through as written elsewhere stay plain JSON: the training config, the
sweep rows (`SweepRow.to_json`), the detection metrics of the test split / OOD sets / held-out
kinds (`metrics.detection_metrics`), the multi-layer comparison and the timings.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probewatch.jsonio import write_json_atomic
from probewatch.probes import Aggregation, Threshold
from probewatch.training.datasets.common import Source
from probewatch.training.report_sources import SourcesReport, drop_unset, omit_unset

REPORT_FILENAME = "report.json"


@dataclass
class ModelInfo:
    id: str
    fingerprint: str
    n_layers: int
    d_model: int


@dataclass
class KindCounts:
    """Examples of one data kind in the pool: total, by label, and distinct groups."""

    n: int = 0
    positive: int = 0
    negative: int = 0
    groups: int = 0


@dataclass
class DataSummary:
    kinds: dict[str, KindCounts]
    train_only_kinds: list[str]
    sources: list[Source]
    ood: dict[str, int]  # OOD set name -> dialogues
    control: Source
    control_kinds: dict[str, int]
    notes: dict[str, Any]

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DataSummary:
        return cls(
            kinds={k: KindCounts(**v) for k, v in d["kinds"].items()},
            train_only_kinds=list(d["train_only_kinds"]),
            sources=[Source(**s) for s in d["sources"]],
            ood=dict(d["ood"]),
            control=Source(**d["control"]),
            control_kinds=dict(d["control_kinds"]),
            notes=dict(d["notes"]),
        )


@dataclass
class Selection:
    """How the shipped configuration was chosen; `chosen` is its sweep row (`SweepRow.to_json`)."""

    basis: str  # heldout_kind | ood | validation
    n_configurations: int
    chosen: dict[str, Any]


@dataclass
class Metrics:
    """The bundle's headline numbers (also recorded in its manifest's `metrics`)."""

    auroc: float | None
    auroc_test_per_kind: dict[str, float | None]
    recall_at_fpr_control: float | None
    fpr: float
    fpr_control_heldout: float | None
    auroc_heldout_kind: float | None
    auroc_heldout_kind_per_kind: dict[str, float | None]
    auroc_ood: dict[str, float | None]
    recall_at_fpr_control_ood: dict[str, float | None]
    operating_point: dict[str, Any]  # OperatingSummary.to_json() without per_kind
    n_test: int
    split: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AtThreshold:
    """Recall / flagged test negatives / flagged held-out control at one threshold."""

    threshold: float
    recall: float | None
    fpr_negatives: float | None
    fpr_control_heldout: float


@dataclass
class KindOperating:
    """One test kind at the shipped threshold."""

    recall: float | None
    fpr_negatives: float | None
    n: int


@dataclass
class ControlKindOperating:
    """One kind of held-out control traffic at the shipped threshold."""

    fpr: float
    n: int


_TRANSFER_KEYS = ("transfer_fpr", "transfer_threshold", "transfer_recall_floor")
_RECALL_BAND_KEYS = ("min_recall", "recall_threshold", "band_floor", "band_control_fpr", "band")
_UNSET_OMITTED = (*_RECALL_BAND_KEYS, "hard_negative_kind", "hard_negatives_per_kind", *_TRANSFER_KEYS)


@dataclass
class OperatingSummary:
    """Both operating points (control FPR, hard-negative FPR) measured on held-out data."""

    threshold: float
    set_by: str
    fpr_target: float
    hard_negative_fpr_target: float | None
    control_threshold: float
    hard_negative_threshold: float | None
    n_hard_negatives_calibration: int
    shipped: AtThreshold
    control_only: AtThreshold
    per_kind: dict[str, KindOperating]
    control_per_kind: dict[str, ControlKindOperating]
    # the kind whose own negatives set the hard-negative threshold (None: all of them pooled, or a report
    # written before the per-kind limit)
    hard_negative_kind: str | None = None
    hard_negatives_per_kind: bool | None = None  # None: a report written before the per-kind limit (pooled)
    # the transfer limit (calibration.OperatingPoint): the rate held-out sources asked for and its threshold
    transfer_fpr: float | None = None
    transfer_threshold: float | None = None
    # the calibration recall the transfer threshold was capped to keep (None: the cap did not bind)
    transfer_recall_floor: float | None = None
    # the recall band's limits (calibration.OperatingPoint) and the band the bundle shipped with
    # (band.band_record: edge, why, shares per held-out set); None in reports written before the recall band
    min_recall: float | None = None
    recall_threshold: float | None = None
    band_floor: float | None = None
    band_control_fpr: float | None = None
    band: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        omit_unset(out, _UNSET_OMITTED)  # unset: as written before these existed
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> OperatingSummary:
        return cls(
            **{k: v for k, v in d.items() if k not in ("shipped", "control_only", "per_kind", "control_per_kind")},
            shipped=AtThreshold(**d["shipped"]),
            control_only=AtThreshold(**d["control_only"]),
            per_kind={k: KindOperating(**v) for k, v in d["per_kind"].items()},
            control_per_kind={k: ControlKindOperating(**v) for k, v in d["control_per_kind"].items()},
        )


@dataclass
class Platt:
    slope: float
    offset: float


@dataclass
class Parity:
    """Live scoring path (`score_dialogues`) vs the cached training scores on a few test dialogues."""

    n: int
    max_abs_diff: float


@dataclass
class TrainReport:
    """report.json of one trained bundle. Field order is the JSON key order."""

    probe_id: str
    behaviour: str | None
    bundle: str
    model: ModelInfo
    command: str | None
    config: dict[str, Any]  # TrainConfig as JSON (paths as strings)
    data: DataSummary
    splits: dict[str, int]
    selection: Selection
    metrics: Metrics
    test: dict[str, Any]
    heldout_kinds: dict[str, dict[str, Any]]
    ood: dict[str, dict[str, Any]]
    operating_point: OperatingSummary
    multi_layer: dict[str, Any] | None
    threshold: Threshold
    aggregation: Aggregation
    platt: Platt
    parity: Parity | None
    sweep: list[dict[str, Any]]  # every configuration tried (SweepRow.to_json)
    timings: dict[str, float]
    plots: list[str] | None = field(default=None)  # absent from the JSON when no plots were drawn
    # per-source counts, held-out-source choice, nested estimate, threshold per source (issue 22);
    # absent from the JSON when the run had no sources (and in reports written before it)
    sources: SourcesReport | None = field(default=None)
    # existing bundles scored on this run's test split and OOD sets (training/compare.py; --compare-with)
    compared: list[dict[str, Any]] | None = field(default=None)

    @property
    def chosen(self) -> dict[str, Any]:
        return self.selection.chosen

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["operating_point"] = self.operating_point.to_json()
        if self.plots is None:
            del out["plots"]
        if self.sources is None:
            del out["sources"]
        else:
            drop_unset(out["sources"])
        if self.compared is None:
            del out["compared"]
        if out["threshold"].get("uncertain_from") is None:  # no band: the report as written before bands existed
            del out["threshold"]["uncertain_from"]
        if not out["aggregation"].get("length_scale"):  # no length penalty: as written before `*_norm` existed
            out["aggregation"].pop("length_scale", None)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TrainReport:
        return cls(
            probe_id=d["probe_id"],
            behaviour=d["behaviour"],
            bundle=d["bundle"],
            model=ModelInfo(**d["model"]),
            command=d["command"],
            config=d["config"],
            data=DataSummary.from_json(d["data"]),
            splits=d["splits"],
            selection=Selection(**d["selection"]),
            metrics=Metrics(**d["metrics"]),
            test=d["test"],
            heldout_kinds=d["heldout_kinds"],
            ood=d["ood"],
            operating_point=OperatingSummary.from_json(d["operating_point"]),
            multi_layer=d["multi_layer"],
            threshold=Threshold(**d["threshold"]),
            aggregation=Aggregation(**d["aggregation"]),
            platt=Platt(**d["platt"]),
            parity=None if d["parity"] is None else Parity(**d["parity"]),
            sweep=d["sweep"],
            timings=d["timings"],
            plots=d.get("plots"),
            sources=SourcesReport.from_json(d["sources"]) if d.get("sources") is not None else None,
            compared=d.get("compared"),
        )

    @classmethod
    def read(cls, path: str | Path) -> TrainReport:
        import json

        return cls.from_json(json.loads(Path(path).read_text()))

    def write(self, path: str | Path) -> Path:
        """report.json, formatted as it always was (indent 2, atomic)."""
        return write_json_atomic(path, self.to_json(), indent=2)


def as_report(report: TrainReport | Mapping[str, Any]) -> TrainReport:
    """A TrainReport, whether given one or its JSON (as read from a report.json)."""
    return report if isinstance(report, TrainReport) else TrainReport.from_json(dict(report))
