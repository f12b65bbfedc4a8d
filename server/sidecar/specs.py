"""What the sidecar needs of each loaded bundle's manifest, and what a layer's probes ask of a client."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from probewatch.probes.bundle import Bundle
from probewatch.probes.calibration import CalibrationReference
from probewatch.probes.manifest import Aggregation
from probewatch.probes.vocab import Vocabulary
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

__all__ = ["MONOTONE_AGGREGATIONS", "ProbeSpec", "layer_prompt_rows"]

#: aggregations that can only grow: an alert is raised as soon as the running value crosses
MONOTONE_AGGREGATIONS = ("max", "rolling_mean_max")


@dataclass(frozen=True)
class ProbeSpec:
    """One probe as the engine sees it (id, layer, selection, aggregation, threshold, provenance)."""

    id: str
    behaviour: str
    kind: str
    layer: int
    token_selection: str
    aggregation: Aggregation
    threshold: float
    version: str
    fingerprint: str
    reference: CalibrationReference | None = None  # calibration score bins (drift.py); None: an older bundle
    uncertain_from: float | None = None  # lower edge of the uncertainty band [uncertain_from, threshold); None: none
    layers: tuple[int, ...] = ()  # every layer it reads (several: a multi-layer probe, joined per token: joins.py)
    alerts: bool = True  # False: a family member (families.py): scored and reported, the family alerts for it
    vocabulary: Vocabulary | None = field(default=None, compare=False, repr=False)  # token selection `answer`

    @property
    def streamed_selection(self) -> str:
        """The tokens the engine hands the probe: `answer` takes every token (which ones it reads is decided
        once the reply has started: answers.py), the others exactly their selection."""
        return "all" if self.token_selection == "answer" else self.token_selection

    @property
    def reads(self) -> tuple[int, ...]:
        """The layers the probe reads (`layers`, or just `layer` for a spec built without them)."""
        return self.layers or (self.layer,)

    @property
    def monotone(self) -> bool:
        """Its running value only grows (an alert may be raised early); an `answer` probe's reading can change."""
        return self.aggregation.method in MONOTONE_AGGREGATIONS and self.token_selection != "answer"

    def in_band(self, value: float) -> bool:
        """A final aggregate below the threshold but inside the uncertainty band (recorded, never alerted)."""
        return self.uncertain_from is not None and self.uncertain_from <= value < self.threshold

    @classmethod
    def from_bundle(cls, bundle: Bundle) -> ProbeSpec:
        m = bundle.manifest
        return cls(
            id=m.id,
            behaviour=m.behaviour,
            kind=m.kind,
            layer=m.layer,
            layers=tuple(m.all_layers),
            token_selection=m.token_selection,
            aggregation=m.aggregation,
            threshold=float(m.threshold.value),
            version=str(m.version),
            fingerprint=m.model.fingerprint,
            vocabulary=bundle.vocabulary,
            uncertain_from=None if m.threshold.uncertain_from is None else float(m.threshold.uncertain_from),
            reference=(
                CalibrationReference.from_json(m.extra["calibration_reference"])
                if isinstance(m.extra.get("calibration_reference"), dict)
                else None
            ),
        )


def layer_prompt_rows(specs: Sequence[ProbeSpec]) -> pb.PromptRows:
    """The PromptRows a set of probes on one layer needs."""
    selections = {s.streamed_selection for s in specs}
    if "all" in selections:
        return pb.PROMPT_ROWS_ALL
    if "prompt_last" in selections:
        return pb.PROMPT_ROWS_LAST
    return pb.PROMPT_ROWS_NONE
