"""What happens to a generation that cannot be monitored: the `on_unmonitored` policy.

`allow` (the default) is fail-open: the generation is served unmonitored and counted. A monitor
outage (sidecar restarting, network cut, sidecar overloaded) must not become a serving outage, and
for most deployments an answer the probes did not see is better than no answer; the alert rule
`ProbewatchUnmonitoredGenerations` makes every such generation visible. `allow` is safe against
callers only because nothing a caller controls decides monitoring: ids and metadata are bounded
before the Open (bounds.py), and the remaining caller-driven reason (`unsupported_input`, e.g. beam
search through HF `generate()`) is counted like any other.

`reject` is for deployments where an unmonitored answer is worse than none: a generation that
cannot be monitored is refused to the caller (HF attach raises `UnmonitoredGenerationRefused`,
`probewatch run` answers 503 in OpenAI's error shape), counted in
`probewatch_client_refused_generations_total{reason}`. The vLLM plugin cannot refuse a request from
inside the engine's step: it counts and serves (docs/live.md, "When a generation cannot be monitored").

Reasons (stable codes: metric labels and `probewatch.reason` of `probewatch run`'s responses):
- `sidecar_down`: no connection to the sidecar when the generation started;
- `sidecar_lost`: the connection was lost (or its Open / Close could not be sent) during it;
- `rejected`: the sidecar refused its Open (over a limit, overloaded, shutting down, duplicate id);
- `unsupported_input`: a generation mode the capture cannot attribute rows of (beam search,
  assisted decoding; vLLM: unreadable `extra_args`, prompt embeddings, no captured layer);
- `opted_out`: a vLLM request that opted out under the operator's `PROBEWATCH_MONITOR` policy
  (never refused: the operator allowed it).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from probewatch.server.client.metrics import ClientMetrics
    from probewatch.server.client.results import GenerationHandle

log = logging.getLogger(__name__)

OnUnmonitored = Literal["allow", "reject"]

#: result statuses of a generation that was not (fully) monitored -> their reason code
_STATUS_CODES = {"rejected": "rejected", "disabled": "disabled"}


class UnmonitoredGenerationRefused(RuntimeError):
    """A generation refused because it could not be monitored (`on_unmonitored="reject"`)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(
            f"probewatch: generation refused: it cannot be monitored ({reason}"
            + (f": {detail}" if detail else "")
            + ") and on_unmonitored is 'reject'"
        )


def result_code(status: str, code: str | None) -> str | None:
    """The stable reason code of a result (`code` when the client set one), None when fully monitored."""
    if code:
        return code
    return _STATUS_CODES.get(status)


def refusal(metrics: ClientMetrics, reason: str, n: int, detail: str = "") -> UnmonitoredGenerationRefused:
    """Count `n` generations refused for `reason` and build the exception that refuses them."""
    metrics.refused.labels(reason=reason).inc(n)
    log.warning("probewatch: refused %d generation(s) that cannot be monitored (%s): %s", n, reason, detail or "-")
    return UnmonitoredGenerationRefused(reason, detail)


def check_settled(handles: list[GenerationHandle], metrics: ClientMetrics) -> UnmonitoredGenerationRefused | None:
    """`reject` during a generation: the refusal (counted now; the caller raises it and keeps it, so it
    is counted once per call) once one of its sequences is known unmonitored (its Open refused, its
    stream lost), instead of generating the rest for nothing; None while all may still be monitored."""
    for h in handles:
        if h.done:
            r = h.result(0)
            if not r.monitored:
                reason = result_code(r.status, r.code) or r.status
                return refusal(metrics, reason, len(handles), f"generation {h.id}: {r.reason or r.status}")
    return None


def require_monitored(handles: list[GenerationHandle], metrics: ClientMetrics, timeout_s: float) -> None:
    """`reject` at the end of a generation: wait for each summary; refuse all if one was not monitored
    (or its summary did not come within `timeout_s`: monitoring cannot be confirmed)."""
    for h in handles:
        r = h.result(timeout_s)
        if not r.monitored or r.status != "closed" or r.code:
            reason = result_code(r.status, r.code) or r.status
            raise refusal(metrics, reason, len(handles), f"generation {h.id}: {r.reason or r.status}")


__all__ = [
    "OnUnmonitored",
    "UnmonitoredGenerationRefused",
    "check_settled",
    "refusal",
    "require_monitored",
    "result_code",
]
