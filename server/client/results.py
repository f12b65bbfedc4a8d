"""What a caller gets back per generation: `GenerationHandle` (filled as the sidecar answers) and
`GenerationResult` (its snapshot). Shared by every capture backend."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from probewatch.proto.codec import decode_tensor
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.client.unmonitored import result_code

log = logging.getLogger(__name__)

# sidecar error codes that, on a generation with no score yet, mean its Open was refused
_OPEN_REFUSALS = frozenset(
    ("FAILED_PRECONDITION", "ALREADY_EXISTS", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED", "UNAVAILABLE")
)


@dataclass
class GenerationResult:
    generation_id: str
    monitored: bool
    status: str  # closed | aborted | unmonitored | rejected | pending
    reason: str | None = None  # why not (fully) monitored, in words (may quote the sidecar: for logs)
    prompt_length: int = 0
    scores: dict[str, float] = field(default_factory=dict)  # aggregate per probe
    flagged: dict[str, bool] = field(default_factory=dict)
    # not flagged, but inside the probe's uncertainty band (a low-priority incident; no alert); older sidecars: none
    uncertain: dict[str, bool] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    token_scores: dict[str, dict[int, float]] = field(default_factory=dict)  # probe -> position -> score
    tokens_scored: int = 0
    dropped_chunks: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    # why not (fully) monitored as a stable code (server/client/unmonitored.py), None when it was
    code: str | None = None

    def to_json(self, token_scores: bool = False, public: bool = False) -> dict[str, Any]:
        """JSON of the result; `public`: for an API caller, `reason` is the stable code only and errors
        carry no sidecar text (the details are in the client's log)."""
        out = {k: v for k, v in self.__dict__.items() if k != "token_scores"}
        out["scores"] = {k: (None if v != v else v) for k, v in self.scores.items()}  # NaN -> null
        if token_scores:
            out["token_scores"] = {p: sorted(s.items()) for p, s in self.token_scores.items()}
        if public:
            out["reason"] = result_code(self.status, out.pop("code"))
            out["errors"] = [{"code": e["code"], "layer": e["layer"]} for e in self.errors]
        return out


class GenerationHandle:
    """One monitored sequence; filled by the link thread as responses arrive."""

    def __init__(self, generation_id: str, prompt_length: int, monitored: bool = True, reason: str | None = None):
        self.id = generation_id
        self.prompt_length = prompt_length
        self.session = -1
        self.dropped = 0
        self.rejected = False
        self.capture_error: str | None = None  # set when the capture self-check stopped monitoring
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._result = GenerationResult(
            generation_id, monitored, "pending" if monitored else "unmonitored", reason, prompt_length, code=reason
        )
        if not monitored:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def rename(self, generation_id: str) -> None:
        """Use another id on the wire (the client bounded a caller's over-long one before its Open)."""
        self.id = generation_id
        with self._lock:
            self._result.generation_id = generation_id

    def result(self, timeout: float = 10.0) -> GenerationResult:
        """The summary once the sidecar sent it; after `timeout` seconds, what arrived so far.

        A summary that does not come back in time leaves status 'pending' with a reason naming the
        wait (logged once): a caller never blocks longer than `timeout`.
        """
        if not self._done.wait(timeout):
            with self._lock:
                if self._result.reason is None:
                    self._result.reason = f"no summary from the sidecar within {timeout:g}s"
                    self._result.code = "summary_timeout"
                    log.warning("probewatch: generation %s: %s", self.id, self._result.reason)
        with self._lock:
            r = self._result
            return GenerationResult(
                **{
                    **r.__dict__,
                    "scores": dict(r.scores),
                    "flagged": dict(r.flagged),
                    "uncertain": dict(r.uncertain),
                    "thresholds": dict(r.thresholds),
                    "alerts": list(r.alerts),
                    "token_scores": {k: dict(v) for k, v in r.token_scores.items()},
                    "errors": list(r.errors),
                    "dropped_chunks": max(r.dropped_chunks, self.dropped),
                }
            )

    # -- called by the link thread ------------------------------------------------------------------
    def _on_score(self, update: pb.ScoreUpdate) -> None:
        scores = decode_tensor(update.scores, "scores")
        positions = list(update.positions)
        with self._lock:
            for j, pid in enumerate(update.probe_ids):
                per = self._result.token_scores.setdefault(pid, {})
                for i, p in enumerate(positions):
                    per[p] = float(scores[i, j])
            self._result.scores.update(update.aggregates)

    def _on_alert(self, alert: pb.Alert) -> None:
        with self._lock:
            self._result.alerts.append(alert_json(alert))

    def _on_summary(self, summary: pb.GenerationSummary) -> None:
        with self._lock:
            r = self._result
            r.status = summary.status
            r.reason = self.capture_error  # a late summary replaces the 'no summary within' note
            r.code = "capture_error" if self.capture_error else (None if summary.status == "closed" else summary.status)
            r.tokens_scored = summary.tokens_scored
            r.dropped_chunks = summary.dropped_chunks
            for res in summary.results:
                r.scores[res.probe_id] = res.score
                r.flagged[res.probe_id] = res.flagged
                r.uncertain[res.probe_id] = res.uncertain
                r.thresholds[res.probe_id] = res.threshold
            r.alerts = [alert_json(a) for a in summary.alerts]
        self._done.set()

    def _on_error(self, error: pb.Error) -> bool:
        """Record a sidecar error; True when it refused the generation itself (its Open), just now."""
        with self._lock:
            self._result.errors.append({"code": error.code_name, "message": error.message, "layer": error.layer})
        if error.layer == -1 and error.code_name in _OPEN_REFUSALS and not self._result.token_scores:
            self.rejected = True
            return self._resolve(False, "rejected", f"{error.code_name}: {error.message}", "rejected")
        return False

    def _resolve(self, monitored: bool, status: str, reason: str, code: str | None = None) -> bool:
        """Settle the result unless it already is; True when this call settled it."""
        with self._lock:
            if self._done.is_set():
                return False
            self._result.monitored = monitored
            self._result.status = status
            self._result.reason = reason
            self._result.code = code
        self._done.set()
        return True


def alert_json(a: pb.Alert) -> dict[str, Any]:
    return {
        "probe": a.probe_id,
        "behaviour": a.behaviour,
        "score": a.score,
        "threshold": a.threshold,
        "early": a.early,
        "incident_id": a.incident_id or None,
        "position": a.position,
    }
