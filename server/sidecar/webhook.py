"""Alert webhook: JSON POSTs from a background worker with exponential-backoff retries.

Scoring never waits on the network: `submit` only enqueues (a full queue counts a failed
delivery instead of blocking). A delivery is retried on connection errors, timeouts, 429 and
5xx; any other 4xx fails at once (retrying a request the receiver rejects cannot succeed).
Outcomes are counted in `probewatch_webhook_deliveries_total{outcome}`.

The delivery thread never dies: the body is encoded by probewatch's own JSON writer (NaN and
infinities become null; httpx would refuse them), and any exception in one delivery — encoding,
transport, a bug — fails that delivery (counted, logged, reported through `on_error`) and the
thread goes on with the next. Otherwise one bad payload would silence every later alert and
`ProbewatchWebhookFailing` could not fire, since nothing would be counted any more.

With a review base URL (`--review-url`, the address reviewers open `probewatch review` at), each
payload carries `incident_url`: the incident's page, so a chat message or a pager alert links
straight to it.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any
from urllib.parse import urlsplit

from probewatch.errors import ProbewatchError

log = logging.getLogger(__name__)
_STOP = object()


class WebhookURLError(ProbewatchError):
    """--webhook is not an http(s) URL with a host."""


def validate_webhook_url(url: str) -> str:
    """Return the URL, or raise WebhookURLError saying what is wrong (checked at startup)."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError for a non-numeric / out-of-range port
    except ValueError as exc:
        raise WebhookURLError(f"malformed webhook URL {url!r}: {exc}") from exc
    if parts.scheme not in ("http", "https"):
        raise WebhookURLError(
            f"malformed webhook URL {url!r}: scheme must be http or https, got {parts.scheme or '(none)'!r}"
        )
    if not parts.hostname:
        raise WebhookURLError(f"malformed webhook URL {url!r}: no host")
    if any(c.isspace() for c in url):
        raise WebhookURLError(f"malformed webhook URL {url!r}: contains whitespace")
    del port
    return url


def incident_url(review_url: str, incident_id: int) -> str:
    """The review app's page of one incident (deep link in webhook payloads and alerts)."""
    return f"{review_url.rstrip('/')}/incidents/{int(incident_id)}"


class WebhookSender:
    """One daemon thread delivering queued payloads in order."""

    def __init__(
        self,
        url: str,
        on_outcome=None,
        on_error=None,
        max_attempts: int = 5,
        base_delay_s: float = 0.5,
        max_delay_s: float = 30.0,
        timeout_s: float = 5.0,
        queue_size: int = 1000,
        review_url: str | None = None,
    ) -> None:
        self.url = validate_webhook_url(url)
        self.review_url = validate_webhook_url(review_url).rstrip("/") if review_url else None
        self.on_outcome = on_outcome or (lambda outcome: None)
        self.on_error = on_error or (
            lambda: None
        )  # an exception the thread survived (probewatch_internal_errors_total)
        self.max_attempts = max_attempts
        self.base_delay_s = base_delay_s
        self.max_delay_s = max_delay_s
        self.timeout_s = timeout_s
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="probewatch-webhook", daemon=True)
        self._thread.start()
        self.delivered = 0
        self.failed = 0

    def submit(self, payload: dict[str, Any]) -> bool:
        if self.review_url and payload.get("incident_id"):
            payload = {**payload, "incident_url": incident_url(self.review_url, int(payload["incident_id"]))}
        try:
            self._queue.put_nowait(payload)
            return True
        except queue.Full:
            log.error("webhook queue full; alert for %s not delivered", payload.get("generation_id"))
            self._outcome("failed")
            return False

    def close(self, timeout_s: float = 10.0) -> None:
        """Deliver what is queued (up to timeout_s), then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout_s)
        self._stopping.set()

    def _outcome(self, outcome: str) -> None:
        if outcome == "ok":
            self.delivered += 1
        else:
            self.failed += 1
        try:
            self.on_outcome(outcome)
        except Exception:  # a metrics callback must not end deliveries
            log.exception("webhook outcome callback failed")

    def _survived(self, what: str) -> None:
        log.exception("webhook: %s", what)
        try:
            self.on_error()
        except Exception:
            log.exception("webhook error callback failed")

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                try:
                    ok = self._deliver(client, item)
                except Exception:  # noqa: BLE001 - one delivery's failure must not end the thread
                    self._survived(f"delivery of {type(item).__name__} failed unexpectedly")
                    ok = False
                self._outcome("ok" if ok else "failed")

    def _deliver(self, client, payload: dict[str, Any]) -> bool:
        import httpx

        from probewatch.jsonio import dumps

        try:
            body = dumps(payload).encode()
        except (TypeError, ValueError):
            self._survived("alert payload cannot be encoded as JSON; not delivered")
            return False
        delay = self.base_delay_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = client.post(self.url, content=body, headers={"content-type": "application/json"})
                if response.status_code < 300:
                    return True
                retryable = response.status_code == 429 or response.status_code >= 500
                why = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                retryable, why = True, f"{type(exc).__name__}: {exc}"
            if not retryable or attempt == self.max_attempts:
                log.warning("webhook delivery to %s failed after %d attempt(s): %s", self.url, attempt, why)
                return False
            if self._stopping.wait(delay):
                return False
            delay = min(delay * 2, self.max_delay_s)
        return False
