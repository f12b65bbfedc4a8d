"""Probe families live (issue 22): a family's score is derived from its members' running aggregates.

A family (probes/family.py) is several ordinary bundles (its members, scored by the runtime like any
probe: rows, pushdown, HF and vLLM alike) plus a threshold on the maximum of their calibrated aggregates.
The sidecar reports that maximum under the family's own probe id (ScoreUpdate aggregates, the summary's
ProbeResult, the generation-score histogram, drift) and raises the one alert: members are scored and
reported but never alert on their own (`ProbeSpec.alerts` False), so one deceptive generation gives one
deception incident whatever type of lie it is. The incident's context entry for the family names the
member that scored highest (`family.member`) and every member's score.

Streaming parity: a member's running aggregate after any prefix equals its offline value of that prefix,
so their maximum does too. A family's early alert needs every member to be monotone (max,
rolling_mean_max): only then can the maximum never fall below a crossing; otherwise it alerts at close.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from probewatch.probes.aggregate import Aggregator
from probewatch.probes.calibration import CalibrationReference
from probewatch.probes.family import FamilyManifest, check_members, family_score
from probewatch.probes.manifest import Aggregation
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.alerts import AlertDesk, Snapshot
from probewatch.server.sidecar.generations import Generation
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.sidecar.work import SequenceResult

__all__ = ["FamilyAggregator", "FamilyAlertDesk", "FamilyScores", "FamilySpec"]

FAMILY_KIND = "family"


@dataclass(frozen=True)
class FamilySpec(ProbeSpec):
    """A family as the engine and the alert desk see it: a probe with no layer whose value is derived."""

    members: tuple[str, ...] = ()
    member_monotone: bool = False  # every member's aggregation can only grow: the family may alert early
    member_types: tuple[str, ...] = ()

    @property
    def monotone(self) -> bool:
        return self.member_monotone


class FamilyAggregator(Aggregator):
    """The maximum of the members' running aggregates (only members that scored a token count)."""

    def __init__(self, members: dict[str, Aggregator], order: Sequence[str]) -> None:
        super().__init__()
        self.members, self.order = members, tuple(order)

    def update(self, scores) -> float:
        raise TypeError("a family's aggregate is derived from its members; it takes no token scores")

    @property
    def count(self) -> int:
        return max((self.members[m].count for m in self.order), default=0)

    @count.setter
    def count(self, _value: int) -> None:  # Aggregator.__init__ sets it; the family derives it
        pass

    @property
    def winner(self) -> str | None:
        return family_score(self._values(), self.order)[1]

    @property
    def value(self) -> float:
        return family_score(self._values(), self.order)[0]

    def _values(self) -> dict[str, float]:
        return {m: self.members[m].value for m in self.order if self.members[m].count}


class FamilyScores:
    """The loaded families: member specs silenced, derived specs, and the per-chunk and close hooks."""

    def __init__(self, families: Sequence[FamilyManifest], specs: dict[str, ProbeSpec], bundles_manifests) -> None:
        check_members(families, bundles_manifests)  # FamilyError naming the family and the problem
        self.families = list(families)
        self.specs: dict[str, FamilySpec] = {}
        for fam in families:
            members = tuple(fam.member_ids)
            for mid in members:  # in place: every holder of the engine's specs sees the member silenced
                specs[mid] = replace(specs[mid], alerts=False)
            first = specs[members[0]]
            reference = fam.extra.get("calibration_reference")
            self.specs[fam.id] = FamilySpec(
                id=fam.id,
                behaviour=fam.behaviour,
                kind=FAMILY_KIND,
                layer=-1,
                token_selection=first.token_selection,
                aggregation=Aggregation(method="max"),  # over members
                threshold=float(fam.threshold.value),
                version=fam.version,
                fingerprint=fam.model_fingerprint or first.fingerprint,
                reference=CalibrationReference.from_json(reference) if isinstance(reference, dict) else None,
                uncertain_from=None if fam.threshold.uncertain_from is None else float(fam.threshold.uncertain_from),
                members=members,
                member_monotone=all(specs[m].monotone for m in members),
                member_types=tuple(m.type for m in fam.members),
            )
        self._of_member = {m: fid for fid, s in self.specs.items() for m in s.members}

    def __bool__(self) -> bool:
        return bool(self.specs)

    def member_of(self, probe_id: str) -> str | None:
        """The family a probe is a member of (None: none)."""
        return self._of_member.get(probe_id)

    def reads(self, family_id: str, specs: dict[str, ProbeSpec]) -> list[int]:
        """Every layer the family's members read (what a unary Score of the family needs)."""
        return sorted({layer for m in self.specs[family_id].members for layer in specs[m].reads})

    def with_members(self, wanted: set[str]) -> set[str]:
        """`wanted` plus the members of the families in it (empty stays empty: every probe)."""
        out = set(wanted)
        for fid in wanted & set(self.specs):
            out.update(self.specs[fid].members)
        return out

    def sequence_results(self, results: Sequence[SequenceResult], wanted: set[str]) -> list[SequenceResult]:
        """Unary Score of families: the maximum of the members' aggregates, with the leading member's token
        scores (as at close of a stream), for the families in `wanted`, or, when it is empty, every family
        whose members were all scored (the request carried their layers)."""
        by_id = {r.spec.id: r for r in results}
        out = []
        for fid, spec in self.specs.items():
            if (wanted and fid not in wanted) or not all(m in by_id for m in spec.members):
                continue
            value, winner = family_score({m: by_id[m].aggregate for m in spec.members}, spec.members)
            lead = by_id[winner or spec.members[0]]
            out.append(SequenceResult(spec, lead.positions, lead.scores, value, member=winner or ""))
        return out

    def attach(self, gen: Generation) -> None:
        """Give a new generation its family aggregates (views of the member aggregators)."""
        for fid, spec in self.specs.items():
            gen.aggregators[fid] = FamilyAggregator({m: gen.aggregators[m] for m in spec.members}, spec.members)
            gen.token_scores[fid] = gen.token_scores[spec.members[0]]

    def update(self, gen: Generation, aggregates: dict[str, float], alerts: AlertDesk, position: int) -> None:
        """After a chunk updated some members: the families' values join `aggregates` (the ScoreUpdate), and a
        family of monotone members alerts as soon as its maximum crosses."""
        touched = {self._of_member[pid] for pid in aggregates if pid in self._of_member}
        now = time.time()
        for fid in touched:
            spec, agg = self.specs[fid], gen.aggregators[fid]
            value = agg.value
            self._follow_winner(gen, spec, agg)
            aggregates[fid] = value
            if spec.monotone and fid not in gen.alerts and not math.isnan(value) and value >= spec.threshold:
                alerts.raise_alert(gen, spec, value, True, position, now)

    def finalize(self, gen: Generation, alerts: AlertDesk, now: float) -> list[pb.ProbeResult]:
        """At close: each family's final maximum (its kept token scores the winner's), its late alert or band
        decision, and its ProbeResult."""
        results = []
        for fid, spec in self.specs.items():
            winner = self._follow_winner(gen, spec, gen.aggregators[fid])
            result = alerts.result(gen, spec, now)
            result.member = winner or ""
            results.append(result)
        return results

    @staticmethod
    def _follow_winner(gen: Generation, spec: FamilySpec, agg: Aggregator) -> str | None:
        """The family's kept token scores are its leading member's (the heatmap an incident shows); returns it."""
        winner = agg.winner if isinstance(agg, FamilyAggregator) else None
        if winner is not None:
            gen.token_scores[spec.id] = gen.token_scores[winner]
        return winner


class FamilyAlertDesk(AlertDesk):
    """The alert desk that also writes, in a family's incident context, which member fired."""

    def _generation_context(self, snap: Snapshot) -> dict[str, dict]:
        out = super()._generation_context(snap)
        for pid, spec in self.specs.items():
            if isinstance(spec, FamilySpec) and pid in out:
                scores = {m: snap.values[m][0] for m in spec.members if snap.values[m][1]}
                out[pid]["family"] = {
                    "member": family_score(scores, spec.members)[1],
                    "members": {m: scores.get(m) for m in spec.members},
                    "types": dict(zip(spec.members, spec.member_types)),
                }
        return out
