"""Incidents are written off the scoring thread: a slow write (redaction of a huge, adversarial response)
never delays another stream's scores, the summary still carries the incident id, shutdown writes what is
queued, and a full writer queue drops (counted) instead of blocking. Real sidecar over gRPC, real store."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np

from probewatch.server.sidecar.incident_queue import IncidentQueue
from probewatch.server.sidecar.metrics import SidecarMetrics
from probewatch.server.store import IncidentStore
from probewatch.server.store.privacy import TextPolicy
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.waiting import wait_until

ADVERSARIAL = "a-" * 15_000  # 30,000 characters: what took the old e-mail rule seconds to redact


class SlowRedaction(TextPolicy):
    """The store's own text policy, with redaction of long texts taking `delay_s` (as the quadratic rules did)."""

    delay_s = 3.0

    def text(self, text: str | None) -> str | None:
        if text is None or len(text) < 10_000:
            return super().text(text)
        self.started.set()
        time.sleep(self.delay_s)
        try:
            return super().text(text)
        finally:
            self.finished.set()


def slow_down(sidecar, delay_s: float) -> SlowRedaction:
    base = sidecar.incidents.policy
    slow = SlowRedaction(**{f.name: getattr(base, f.name) for f in dataclasses.fields(base)})
    slow.delay_s, slow.started, slow.finished = delay_s, threading.Event(), threading.Event()
    sidecar.incidents.policy = slow
    return slow


def hot_row(sidecar) -> np.ndarray:
    """A row that pushes probe `dec` (layer 1, max, threshold 1.0) to 5.25: an early alert."""
    w = sidecar.runtime.stacks[1].weight[:, 0].numpy()
    return (w / np.dot(w, w) * 5.0)[None].astype(np.float32)


def test_a_slow_incident_write_never_delays_other_streams_scores(start_sidecar, tmp_path, tiny_fp):
    sidecar = start_sidecar()
    slow = slow_down(sidecar, delay_s=3.0)
    alerting = StreamClient(sidecar.address)
    alerting.send(open_msg("hot", tiny_fp), chunk_msg("hot", 1, hot_row(sidecar), [0]))
    alerting.wait_for(lambda rs: any(r.WhichOneof("msg") == "alert" for r in rs))
    (early,) = alerting.of("alert", "hot")
    assert early.early and early.incident_id > 0  # written before the client was told, as before
    other = StreamClient(sidecar.address)
    other.send(open_msg("calm", tiny_fp))
    alerting.send(close_msg("hot", prompt="the prompt", response=ADVERSARIAL))
    assert slow.started.wait(10)  # the incident writer is now redacting for 3 s
    latencies = []
    for i in range(5):
        sent = time.monotonic()
        other.send(chunk_msg("calm", 1, np.zeros((1, D_TINY), np.float32), [i]))
        other.wait_for(lambda rs, k=i + 1: sum(len(u.positions) for u in other.of("score", "calm")) >= k, timeout=5)
        latencies.append(time.monotonic() - sent)
    assert not slow.finished.is_set()  # every update came while the write was still in progress
    assert max(latencies) < 0.5, latencies
    summary = alerting.wait_summary("hot", timeout=15)  # after the write: it carries the incident id
    assert slow.finished.is_set() and summary.alerts[0].incident_id == early.incident_id
    other.send(close_msg("calm"))
    assert other.wait_summary("calm").tokens_scored == 5
    for c in (alerting, other):
        c.close()
    row = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).get(early.incident_id)
    assert row.generation_status == "closed" and row.response == ADVERSARIAL and row.prompt == "the prompt"


def test_shutdown_writes_the_incidents_still_queued(start_sidecar, tmp_path, tiny_fp):
    sidecar = start_sidecar()
    slow = slow_down(sidecar, delay_s=1.0)
    client = StreamClient(sidecar.address)
    client.send(open_msg("late", tiny_fp), chunk_msg("late", 1, hot_row(sidecar), [0]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "alert" for r in rs))
    (alert,) = client.of("alert", "late")
    client.send(close_msg("late", response=ADVERSARIAL))
    assert slow.started.wait(10)
    sidecar.stop(0)  # SIGTERM's path: returns once the queued write is done
    assert slow.finished.is_set()
    client.close()
    row = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).get(alert.incident_id)
    assert row.generation_status == "closed" and row.response == ADVERSARIAL


def test_a_full_incident_queue_drops_and_counts_and_early_alerts_go_first():
    metrics = SidecarMetrics()
    writer = IncidentQueue(metrics, capacity=2).start()
    gate, ran = threading.Event(), []
    writer.submit(lambda: gate.wait(10), "s")  # the writer thread is busy with this one
    wait_until(lambda: writer.depth() == 0, 5, "the writer took the first job")
    assert writer.submit(lambda: ran.append("close"), "s")
    assert writer.submit(lambda: ran.append("early"), "s", kind="early", urgent=True)
    t0 = time.monotonic()
    assert not writer.submit(lambda: ran.append("dropped"), "s", kind="close")  # full: refused at once
    assert time.monotonic() - t0 < 0.05
    assert writer.submit(lambda: ran.append("end"), "s", essential=True)  # a stream's end is never dropped
    assert writer.pending("s") == 4 and writer.depth() == 3
    gate.set()
    writer.stop(10)
    assert ran == ["early", "close", "end"] and writer.pending("s") == 0
    from prometheus_client import generate_latest

    text = generate_latest(metrics.registry).decode()
    assert metric_value(text, "probewatch_incident_writes_dropped_total", kind="close") == 1
    assert metric_value(text, "probewatch_incident_writes_dropped_total", kind="early") == 0


def test_a_failing_write_job_is_counted_and_the_writer_goes_on(start_sidecar):
    sidecar = start_sidecar()
    done = threading.Event()

    def broken() -> None:
        raise RuntimeError("bug")

    sidecar.engine.writer.submit(broken, "s")
    sidecar.engine.writer.submit(done.set, "s")
    assert done.wait(5)
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_internal_errors_total", component="incidents") == 1
