"""Alert -> incident -> webhook: what happens when a generation's aggregate crosses a probe's threshold.

Monotone aggregations (max, rolling_mean_max) can only grow, so for those the engine raises an
alert early, as soon as the running aggregate crosses; others are evaluated at close on the final
aggregate. The incident row is written when the alert is raised (an early alert survives a crash
of the sidecar) and completed at close with the final score, all kept token scores and the text
(server/store/). A failing disk or webhook is counted and logged; it never stops scoring.

Off the scoring thread: the scoring worker only decides (alert or not, final aggregates) and takes
a cheap snapshot of what the incident keeps; writing (redaction, JSON, the store's commit) and the
webhook run on the incident writer (server/sidecar/incident_queue.py), which then sends what carries
the incident id: the early alert, the late alerts and the summary. Metrics count the alert at once.

Uncertainty band (a bundle's `threshold.uncertain_from`): a generation whose final aggregate ends in
[uncertain_from, threshold) raises no alert and no webhook; it is counted (`probewatch_uncertain_total`),
marked `uncertain` in the summary's ProbeResult and written as a `low` priority incident, so a reviewer
sees the cases one threshold could not decide without anyone being paged. For a monotone aggregation the
final value is the peak, so "ends in the band" and "peaks in the band" agree; above the threshold nothing
changes.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probewatch.jsonio import to_jsonable
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.sidecar.answers import AnswerAggregator
from probewatch.server.sidecar.drift import DriftMonitor
from probewatch.server.sidecar.generations import Generation
from probewatch.server.sidecar.incident_queue import IncidentQueue
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.sidecar.specs import ProbeSpec
from probewatch.server.store import Incident, IncidentNotFoundError, IncidentStore, probe_context
from probewatch.server.store.privacy import TextPolicy

__all__ = ["AlertDesk", "Snapshot", "token_score_pairs", "webhook_payload"]

log = logging.getLogger(__name__)

#: [[position, token id], ...], {probe: result} and [[position, token text], ...]: stored once per
#: generation with its incidents
_GenerationFacts = tuple[list[list[int]], dict[str, dict], list[list[Any]]]

#: a prompt_last probe's heatmap shows the prompt's last tokens (what the probe read them after)
PROMPT_TAIL_TOKENS = 8
#: token texts kept before the first shown one, so redaction reads an address or number split there whole
TEXT_CONTEXT_TOKENS = 32


@dataclass
class Snapshot:
    """What an incident keeps of a live generation, copied on the scoring thread (cheap: list and dict
    copies), so the writer thread never reads state the scoring worker is still changing."""

    token_scores: dict[str, list[tuple[np.ndarray, np.ndarray]]]  # per probe: (positions, scores) blocks
    values: dict[str, tuple[float, int]]  # per probe: (aggregate, tokens aggregated)
    token_ids: dict[int, int]
    prompt_text: str | None
    response_text: str | None
    token_texts: list[str] = field(default_factory=list)  # the client's, from `token_texts_start` on
    token_texts_start: int = 0
    answer_options: dict[str, str] = field(default_factory=dict)  # per `answer` probe reading an option: its letter

    @classmethod
    def of(cls, gen: Generation) -> Snapshot:
        token_scores, options = _shown_scores(gen)
        return cls(
            token_scores=token_scores,
            values={pid: (float(agg.value), int(agg.count)) for pid, agg in gen.aggregators.items()},
            token_ids=dict(gen.token_ids),
            prompt_text=gen.prompt_text,
            response_text=gen.response_text,
            token_texts=gen.token_texts,  # set once at Close, never changed after: no copy needed
            token_texts_start=gen.token_texts_start,
            answer_options=options,
        )


def _shown_scores(gen: Generation) -> tuple[dict[str, list[tuple[np.ndarray, np.ndarray]]], dict[str, str]]:
    """Per probe, the (positions, token scores) blocks its heatmap shows: what it read. An `answer` probe
    that reads an option shows that option's prompt tokens (else its reply's, which is what the engine kept);
    a family whose kept scores are such a member's shows the same. Also each such probe's option letter."""
    shown = {pid: list(blocks) for pid, blocks in gen.token_scores.items()}
    options: dict[str, str] = {}
    for pid, agg in gen.aggregators.items():
        read = agg.option_read() if isinstance(agg, AnswerAggregator) else None
        if read is None:
            continue
        letter, positions, scores = read
        blocks = [(positions, scores[:, -1].astype(np.float32))]
        for other, kept in gen.token_scores.items():  # the probe itself, and a family it leads
            if kept is gen.token_scores[pid]:
                shown[other], options[other] = blocks, letter
    return shown, options


def _alert_record(
    gen: Generation, spec: ProbeSpec, value: float, position: int, now: float, early: bool = False
) -> pb.Alert:
    """The Alert message of one probe on one generation: an alert's, or an uncertain result's incident row."""
    return pb.Alert(
        generation_id=gen.id,
        probe_id=spec.id,
        behaviour=spec.behaviour,
        score=value,
        threshold=spec.threshold,
        early=early,
        position=position,
        bundle_version=spec.version,
        time_unix=now,
    )


class AlertDesk:
    """Raises alerts; writes and completes their incident rows and hands them to the webhook (on the writer)."""

    def __init__(
        self,
        specs: Mapping[str, ProbeSpec],
        metrics: SidecarMetrics,
        fingerprint: str,
        incidents: IncidentStore | None = None,
        webhook=None,
        policy: TextPolicy | None = None,
        writer: IncidentQueue | None = None,
    ) -> None:
        self.specs = specs
        self.metrics = metrics
        self.fingerprint = fingerprint
        self.incidents = incidents
        self.webhook = webhook
        # not started: jobs run on the caller's thread (a desk used on its own, e.g. in a unit test)
        self.writer = writer or IncidentQueue(metrics)
        # what webhook payloads keep of client metadata (incident rows: the store's own policy)
        self.policy = policy or (incidents.policy if incidents is not None else TextPolicy("full"))
        # per-probe drift of live scores from calibration, fed at every close (process.py sizes its window)
        self.drift = DriftMonitor(specs)
        metrics.registry.register(self.drift)

    def raise_alert(
        self, gen: Generation, spec: ProbeSpec, value: float, early: bool, position: int, now: float | None = None
    ) -> pb.Alert:
        """Record the alert on the generation; an early one is written and then sent to the client."""
        now = time.time() if now is None else now
        alert = _alert_record(gen, spec, value, position, now, early=early)
        gen.alerts[spec.id] = alert
        self.metrics.alerts.labels(probe=spec.id, behaviour=spec.behaviour).inc()
        self.metrics.last_alert.labels(probe=spec.id).set(now)
        if early:
            self._announce_early(gen, spec, alert)
        return alert

    def decide(
        self, gen: Generation, spec: ProbeSpec, count: int, value: float, now: float | None = None
    ) -> tuple[bool, bool]:
        """At close, one probe's final aggregate: (flagged, uncertain). Flagged raises the late alert unless an
        early one was raised; a value inside the band is recorded as uncertain (counted now, written at settle)."""
        if count <= 0 or not spec.alerts:  # a family member: its family decides (families.py)
            return False, False
        if value >= spec.threshold:
            if spec.id not in gen.alerts:
                self.raise_alert(gen, spec, value, early=False, position=-1, now=now)
            return True, False
        if spec.in_band(value):
            # what the incident row is made of; never sent to the client
            gen.uncertain[spec.id] = _alert_record(gen, spec, value, -1, time.time() if now is None else now)
            self.metrics.uncertain.labels(probe=spec.id, behaviour=spec.behaviour).inc()
            return False, True
        return False, False

    def result(self, gen: Generation, spec: ProbeSpec, now: float) -> pb.ProbeResult:
        """One probe's (or family's) entry in the summary at close: its final aggregate observed in the
        score histogram, decided (`decide`: late alert or band) and reported."""
        agg = gen.aggregators[spec.id]
        value, count = agg.value, agg.count
        if count:
            self.metrics.generation_score.observe_many((spec.id, spec.behaviour), [value])
        flagged, uncertain = self.decide(gen, spec, count, value, now)
        return pb.ProbeResult(
            probe_id=spec.id,
            behaviour=spec.behaviour,
            score=value,
            threshold=spec.threshold,
            flagged=flagged,
            uncertain=uncertain,
            n_tokens=count,
            aggregation=spec.aggregation.method,
            token_selection=spec.token_selection,
        )

    def _announce_early(self, gen: Generation, spec: ProbeSpec, alert: pb.Alert) -> None:
        """Written before the client sees the alert (a crash later does not lose it), on the writer thread.
        With the writer's queue full the alert goes out at once without an id; its row is written at close."""
        if self.incidents is not None:
            snap = Snapshot.of(gen)

            def write_then_send() -> None:
                alert.incident_id = self.record_incident(gen, snap, spec, alert, "open")
                gen.stream.send(pb.MonitorResponse(alert=alert))

            if self.writer.submit(write_then_send, gen.stream, kind="early", urgent=True):
                return
        gen.stream.send(pb.MonitorResponse(alert=alert))

    def settle(self, gen: Generation, status: str, summary: pb.GenerationSummary) -> None:
        """At close: complete every alert's incident, notify the webhook, then send late alerts and `summary`.

        The summary carries the incident ids, so it goes out after the write (on the writer thread).
        With the writer's queue full nothing is persisted (counted) and the summary goes out as is."""
        self.drift.observe({pid: (agg.value, agg.count) for pid, agg in gen.aggregators.items()})
        if (gen.alerts and (self.incidents is not None or self.webhook is not None)) or (
            gen.uncertain and self.incidents is not None
        ):
            job = functools.partial(self._settle, gen, Snapshot.of(gen), status, summary)
            if self.writer.submit(job, gen.stream, kind="close"):
                return
        answer = functools.partial(self._settle, gen, None, status, summary)
        if self.writer.pending(gen.stream):  # behind the stream's queued jobs: its early alerts come first
            self.writer.submit(answer, gen.stream, essential=True)
        else:
            answer()

    def _settle(self, gen: Generation, snap: Snapshot | None, status: str, summary: pb.GenerationSummary) -> None:
        """`snap` None: answer without persisting anything."""
        facts = self._generation_facts(gen, snap) if snap is not None and self.incidents is not None else None
        for pid, alert in gen.alerts.items():
            spec = self.specs[pid]
            alert.score = gen.aggregators[pid].value  # the final aggregate (>= the early one for monotone kinds)
            if snap is not None:
                alert.incident_id = self.record_incident(gen, snap, spec, alert, status, facts)
                self._notify(gen, spec, alert, status)
            if not alert.early:
                gen.stream.send(pb.MonitorResponse(alert=alert))
        if snap is not None:  # uncertain results: a low-priority incident each, no webhook, no Alert message
            for pid, record in gen.uncertain.items():
                record.incident_id = self.record_incident(gen, snap, self.specs[pid], record, status, facts, "low")
        incident_ids = {pid: a.incident_id for pid, a in (*gen.uncertain.items(), *gen.alerts.items())}
        for result in summary.results:
            result.incident_id = incident_ids.get(result.probe_id, 0)
        summary.alerts.extend(gen.alerts.values())
        gen.stream.send(pb.MonitorResponse(summary=summary))

    def _notify(self, gen: Generation, spec: ProbeSpec, alert: pb.Alert, status: str) -> None:
        if self.webhook is None:
            return
        try:
            self.webhook.submit(webhook_payload(gen, spec, alert, self.fingerprint, status, self.policy))
        except Exception:  # a payload problem must not cost the summary
            log.exception("webhook payload for generation %s probe %s failed", gen.id, spec.id)
            self.metrics.internal_errors.labels(component="webhook").inc()

    def record_incident(
        self,
        gen: Generation,
        snap: Snapshot,
        spec: ProbeSpec,
        alert: pb.Alert,
        status: str,
        facts: _GenerationFacts | None = None,
        priority: str = "normal",
    ) -> int:
        """Write (status `open`: at alert time) or complete (at close) the incident row; its id, 0 on failure.

        `facts`: the generation's token ids and every probe's result, when the caller already has them
        (at close they are the same for each of the generation's alerts). `priority`: `low` for an uncertain
        result (in the band, not alerted)."""
        if self.incidents is None:
            return 0
        tokens, context, texts = facts or self._generation_facts(gen, snap)
        known = gen.incident_ids.get(spec.id)
        if known and status != "open":
            settled = self._complete(known, gen, snap, spec, alert, status, (tokens, context, texts))
            if settled is not None:
                return settled
        incident = Incident(
            generation_id=gen.id,
            probe=spec.id,
            behaviour=spec.behaviour,
            score=float(alert.score),
            threshold=spec.threshold,
            model_fingerprint=self.fingerprint,
            bundle_version=spec.version,
            aggregation=spec.aggregation.method,
            token_scores=token_score_pairs(snap.token_scores[spec.id]),
            prompt=snap.prompt_text,
            response=snap.response_text,
            generation_status=status,
            early=alert.early,
            priority=priority,
            metadata=gen.metadata,
            prompt_length=gen.prompt_length,
            tokens=tokens,
            context=context,
            token_texts=texts,
        )
        try:
            if status == "open":
                incident_id = self.incidents.record_alert(incident)
            else:
                incident_id = self.incidents.record(incident)
        except Exception as exc:  # noqa: BLE001 - a failing disk must not stop anything; it is counted
            log.error("incident store write failed for generation %s probe %s: %s", gen.id, spec.id, exc)
            self.metrics.incident_store_errors.inc()
            return 0
        gen.incident_ids[spec.id] = incident_id
        return incident_id

    def _complete(
        self,
        known: int,
        gen: Generation,
        snap: Snapshot,
        spec: ProbeSpec,
        alert: pb.Alert,
        status: str,
        facts: _GenerationFacts,
    ) -> int | None:
        """Complete the row written at alert time: its id, 0 if it was deleted on purpose, None if the write failed."""
        assert self.incidents is not None
        tokens, context, texts = facts
        try:
            self.incidents.complete(
                known,
                score=float(alert.score),
                token_scores=token_score_pairs(snap.token_scores[spec.id]),
                generation_status=status,
                prompt=snap.prompt_text,
                response=snap.response_text,
                prompt_length=gen.prompt_length,
                tokens=tokens,
                context=context,
                token_texts=texts,
            )
            return known
        except IncidentNotFoundError:  # deleted on purpose meanwhile (an erasure): do not write it back
            log.info("incident %d of generation %s was deleted before it completed", known, gen.id)
            return 0
        except Exception as exc:  # noqa: BLE001 - the disk failed: counted, then written anew by the caller
            log.warning("completing incident %d of generation %s failed (%s); writing it again", known, gen.id, exc)
            self.metrics.incident_store_errors.inc()
            return None

    def _generation_facts(self, gen: Generation, snap: Snapshot) -> _GenerationFacts:
        """What the store keeps once per generation: [[position, token id]], every probe's result, and the
        token texts the heatmaps show."""
        tokens = [[p, t] for p, t in sorted(snap.token_ids.items())]
        return tokens, self._generation_context(snap), token_text_window(snap, gen.prompt_length)

    def _generation_context(self, snap: Snapshot) -> dict[str, dict]:
        """Every loaded probe's result on the generation (the review app's heatmaps and "other probes")."""
        out = {}
        for pid, spec in self.specs.items():
            value, count = snap.values[pid]
            out[pid] = probe_context(
                behaviour=spec.behaviour,
                score=value if count else None,
                threshold=spec.threshold,
                n_tokens=count,
                aggregation=spec.aggregation.method,
                token_selection=spec.token_selection,
                uncertain_from=spec.uncertain_from,
                layer=spec.layer,
                version=spec.version,
                token_scores=token_score_pairs(snap.token_scores[pid]),
                answer_option=snap.answer_options.get(pid),
            )
        return out


def token_text_window(snap: Snapshot, prompt_length: int) -> list[list[Any]]:
    """[[position, text], ...] of the client's token texts the store keeps: every position with a score or
    a token id, the prompt's last PROMPT_TAIL_TOKENS, and TEXT_CONTEXT_TOKENS before the first of them."""
    if not snap.token_texts:
        return []
    lo, hi = prompt_length - PROMPT_TAIL_TOKENS, prompt_length
    for blocks in snap.token_scores.values():
        for positions, _ in blocks:
            if positions.size:
                lo, hi = min(lo, int(positions.min())), max(hi, int(positions.max()) + 1)
    if snap.token_ids:
        lo, hi = min(lo, min(snap.token_ids)), max(hi, max(snap.token_ids) + 1)
    start = snap.token_texts_start
    lo, hi = max(start, lo - TEXT_CONTEXT_TOKENS), min(start + len(snap.token_texts), hi)
    return [[p, snap.token_texts[p - start]] for p in range(lo, hi)]


def token_score_pairs(blocks: list[tuple[np.ndarray, np.ndarray]]) -> list[list[float]]:
    """[[position, score], ...] of the kept token scores (what the incident row stores)."""
    return [[int(p), float(v)] for positions, scores in blocks for p, v in zip(positions.tolist(), scores.tolist())]


def webhook_payload(
    gen: Generation, spec: ProbeSpec, alert: pb.Alert, fingerprint: str, status: str, policy: TextPolicy
) -> dict:
    """The alert as JSON-safe values (no NaN/inf: they become null); metadata under the text policy. A
    family's alert also names `member`, the member whose score is the family's (what kind of deception)."""
    member = getattr(gen.aggregators.get(spec.id), "winner", None)  # families.FamilyAggregator only
    return to_jsonable(
        {
            "type": "probewatch.alert",
            "incident_id": int(alert.incident_id) or None,
            "generation_id": gen.id,
            "probe": spec.id,
            "behaviour": spec.behaviour,
            "score": float(alert.score),
            "threshold": spec.threshold,
            "aggregation": spec.aggregation.method,
            "early": bool(alert.early),
            "generation_status": status,
            "model_fingerprint": fingerprint,
            "bundle_version": spec.version,
            "time_unix": float(alert.time_unix),
            "metadata": policy.metadata(gen.metadata),
            **({"member": member} if member is not None else {}),
        }
    )
