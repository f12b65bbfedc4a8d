"""The sidecar under attack and abuse, over real gRPC on localhost: authentication, admission,
keepalive, idle and TTL limits, bounded state, undecodable and extreme input, and the threads
that must survive what they are fed. Each refusal has its precise status and is counted."""

from __future__ import annotations

import json
import queue
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.waiting import wait_until

RNG = np.random.default_rng(1)
TOKEN = "s3cret-token-0123456789abcdef"


def rows(n: int, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal((n, D_TINY)) * scale).astype(np.float32)


def rejected(sidecar, code: str) -> float:
    return metric_value(scrape(sidecar.metrics_port), "probewatch_rejected_messages_total", code=code)


def hot_row(sidecar) -> np.ndarray:
    """A row that pushes probe `dec` (layer 1, max, threshold 1.0) to 5.25: an early alert."""
    w = sidecar.runtime.stacks[1].weight[:, 0].numpy()
    return (w / np.dot(w, w) * 5.0)[None].astype(np.float32)


# -- authentication ---------------------------------------------------------------------------------------
def test_bearer_token_is_required_except_for_health(start_sidecar, tmp_path, tiny_fp):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# rotated monthly\n{TOKEN}\n")
    sidecar = start_sidecar(auth_token_file=token_file)
    sidecar.tokens.reload_every_s = 0.0
    channel = grpc.insecure_channel(sidecar.address)
    stub = pb_grpc.MonitorStub(channel)

    def list_probes(token: str | None):
        metadata = (("authorization", f"Bearer {token}"),) if token else None
        return stub.ListProbes(pb.ListProbesRequest(), timeout=10, metadata=metadata)

    for token in (None, "wrong-token-0123456789"):
        with pytest.raises(grpc.RpcError) as err:
            list_probes(token)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED and "bearer token" in err.value.details()
    assert list_probes(TOKEN).model_fingerprint == tiny_fp
    # the live stream: refused before any message is read
    anonymous = stub.Monitor(iter([open_msg("g", tiny_fp)]), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        next(anonymous)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # health stays open: the kubelet's probes cannot send a token
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == health_pb2.HealthCheckResponse.SERVING
    # rotation: a new token works once the file changes, the removed one stops working
    token_file.write_text("new-token-abcdefghijklmnop\n")
    assert list_probes("new-token-abcdefghijklmnop").d_model == D_TINY
    with pytest.raises(grpc.RpcError):
        list_probes(TOKEN)
    assert rejected(sidecar, "UNAUTHENTICATED") == 4


def test_unusable_token_files_are_refused(tmp_path):
    from probewatch.server.sidecar.auth import AuthConfigError, TokenFile

    (tmp_path / "short").write_text("abc\n")
    (tmp_path / "empty").write_text("# nothing\n\n")
    with pytest.raises(AuthConfigError, match="at least 16 random characters"):
        TokenFile(tmp_path / "short")
    with pytest.raises(AuthConfigError, match="holds no token"):
        TokenFile(tmp_path / "empty")
    with pytest.raises(AuthConfigError, match="cannot read"):
        TokenFile(tmp_path / "missing")


# -- admission and liveness -------------------------------------------------------------------------------
def test_health_answers_fast_with_200_idle_streams_and_the_cap_holds(start_sidecar, tiny_fp):
    sidecar = start_sidecar(max_streams=200, max_streams_per_peer=200)
    channel = grpc.insecure_channel(sidecar.address)
    stub = pb_grpc.MonitorStub(channel)
    feeds, calls = [], []
    try:
        for _ in range(200):
            feed: queue.Queue = queue.Queue()
            feeds.append(feed)
            calls.append(stub.Monitor(iter(feed.get, None)))
        wait_until(lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_active_streams") == 200, 60, "200")
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(sidecar.address))
        timings, statuses = [], []
        for _ in range(7):
            t0 = time.perf_counter()
            statuses.append(health.Check(health_pb2.HealthCheckRequest(), timeout=5).status)
            timings.append(time.perf_counter() - t0)
        assert set(statuses) == {health_pb2.HealthCheckResponse.SERVING}
        assert statistics.median(timings) < 0.1, timings
        # ListProbes (a short unary call) is not starved either
        assert stub.ListProbes(pb.ListProbesRequest(), timeout=5).d_model == D_TINY
        over = stub.Monitor(iter([open_msg("late", tiny_fp)]), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            next(over)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-streams 200" in err.value.details()
        assert rejected(sidecar, "RESOURCE_EXHAUSTED") == 1
    finally:
        for call in calls:
            call.cancel()
        channel.close()
    # slots are given back when streams end
    wait_until(lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_active_streams") == 0, 30, "0 streams")
    client = StreamClient(sidecar.address)
    client.send(open_msg("after", tiny_fp), close_msg("after"))
    assert client.wait_summary("after").status == "closed"
    client.close()


def test_streams_per_peer_and_concurrent_score_caps(start_sidecar, tiny_fp):
    sidecar = start_sidecar(max_streams_per_peer=2, max_concurrent_unary=1, queue_size=4)
    first, second = StreamClient(sidecar.address), StreamClient(sidecar.address)
    for c, gid in ((first, "a"), (second, "b")):
        c.send(open_msg(gid, tiny_fp), close_msg(gid))
        c.wait_summary(gid)
    third = StreamClient(sidecar.address)
    third.ended.wait(10)
    assert third.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-streams-per-peer 2" in third.error.details()
    # Score waits for the scoring worker: while one waits, a second is refused at once
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    request = pb.ScoreRequest(
        prompt_length=0,
        layers=[pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(rows(2)))],
    )
    results: list = []
    with sidecar.engine.hold():
        waiting = threading.Thread(target=lambda: results.append(stub.Score(request, timeout=30)))
        waiting.start()
        wait_until(lambda: sidecar.engine._queue.qsize() >= 1 or sidecar.engine.batches >= 1, 10, "a queued Score")
        time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(request, timeout=10)
        assert (
            err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--max-concurrent-score" in err.value.details()
        )
    waiting.join(30)
    assert results and results[0].probes
    for c in (first, second):
        c.close()


def test_full_queue_answers_unary_score_with_resource_exhausted(start_sidecar, tiny_fp):
    sidecar = start_sidecar(queue_size=1, put_timeout_s=0.2)
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    request = pb.ScoreRequest(
        layers=[pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(rows(1)))]
    )
    client = StreamClient(sidecar.address)
    with sidecar.engine.hold():
        client.send(open_msg("q", tiny_fp), *[chunk_msg("q", 1, rows(1), [i]) for i in range(3)])
        wait_until(lambda: sidecar.engine._queue.full(), 10, "a full queue")
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "scoring queue full" in err.value.details()
    client.send(close_msg("q"))
    client.wait_summary("q")
    client.close()


def test_server_keepalive_enforcement(start_sidecar):
    """Clients may ping every min_ping_interval_s (4 s by default); one pinging faster gets GOAWAY
    (too_many_pings), and one pinging as our own client does (every 5 s) stays connected."""
    sidecar = start_sidecar()
    assert sidecar.config.min_ping_interval_s == 4.0
    outcome: dict[str, object] = {}

    def connect(name: str, ping_ms: int) -> None:
        channel = grpc.insecure_channel(
            sidecar.address,
            options=[
                ("grpc.keepalive_time_ms", ping_ms),
                ("grpc.keepalive_timeout_ms", 1000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.max_pings_without_data", 0),
            ],
        )
        call = pb_grpc.MonitorStub(channel).Monitor(iter(queue.Queue().get, None))
        try:
            for _ in call:
                pass
        except grpc.RpcError as exc:
            outcome[name] = (exc.code(), exc.details())

    threads = [threading.Thread(target=connect, args=a, daemon=True) for a in (("abusive", 1000), ("polite", 5000))]
    started = time.monotonic()
    for t in threads:
        t.start()
    wait_until(lambda: "abusive" in outcome, 20, "GOAWAY for the abusive client")
    # the polite client must survive several pings (a misnamed channel argument once left gRPC's
    # default policy in force, which ends such a client too)
    time.sleep(max(1.5, 16.0 - (time.monotonic() - started)))
    assert outcome["abusive"] == (grpc.StatusCode.UNAVAILABLE, "Too many pings")
    assert "polite" not in outcome  # still connected


FROZEN_CLIENT = """
import queue, sys, time
import grpc
import numpy as np
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.server.grpc_helpers import chunk_msg, open_msg
feed = queue.Queue()
call = pb_grpc.MonitorStub(grpc.insecure_channel(sys.argv[1])).Monitor(iter(feed.get, None))
feed.put(open_msg("frozen", sys.argv[2]))
feed.put(chunk_msg("frozen", 1, np.zeros((1, 64), np.float32), [0]))
next(call)  # its score update: the generation is live
print("ready", flush=True)
time.sleep(600)
"""


def test_server_keepalive_drops_a_frozen_client(start_sidecar, tiny_fp):
    """A client that stops answering (SIGSTOP: the TCP connection stays up) is found by the server's
    pings and dropped; its open generation ends aborted instead of holding state forever."""
    import os
    import signal
    from pathlib import Path

    sidecar = start_sidecar(keepalive_time_s=1.0, keepalive_timeout_s=1.0)
    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(FROZEN_CLIENT), sidecar.address, tiny_fp],
        cwd=repo,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(repo)},
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert metric_value(scrape(sidecar.metrics_port), "probewatch_active_generations") == 1
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        wait_until(
            lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="aborted") == 1,
            30,
            "the frozen client's generation to be aborted",
        )
        assert time.monotonic() - t0 < 15
        assert metric_value(scrape(sidecar.metrics_port), "probewatch_active_streams") == 0
    finally:
        proc.kill()
        proc.wait(10)


def test_silent_stream_times_out_with_its_generations_aborted(start_sidecar, tiny_fp):
    sidecar = start_sidecar(stream_idle_timeout_s=1.0)
    idle_no_generation = StreamClient(sidecar.address)  # holds no generation: not timed out
    silent = StreamClient(sidecar.address)
    silent.send(open_msg("s", tiny_fp), chunk_msg("s", 1, rows(1), [0]))
    summary = silent.wait_summary("s", timeout=20)
    assert summary.status == "aborted" and summary.tokens_scored == 1
    silent.ended.wait(10)
    assert silent.error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "--stream-idle-timeout" in silent.error.details() and "1 generation(s) open" in silent.error.details()
    assert not idle_no_generation.ended.is_set()
    idle_no_generation.send(open_msg("later", tiny_fp), close_msg("later"))
    assert idle_no_generation.wait_summary("later").status == "closed"
    idle_no_generation.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_rejected_messages_total", code="DEADLINE_EXCEEDED") == 1
    assert metric_value(text, "probewatch_generations_total", status="aborted") == 1


def test_generation_open_past_its_ttl_is_aborted_alone(start_sidecar, tiny_fp):
    sidecar = start_sidecar(generation_ttl_s=1.0)
    client = StreamClient(sidecar.address)
    client.send(open_msg("old", tiny_fp), chunk_msg("old", 1, rows(1), [0]))
    assert client.wait_summary("old", timeout=20).status == "aborted"
    (error,) = client.of("error", "old")
    assert error.code_name == "DEADLINE_EXCEEDED" and "--generation-ttl" in error.message
    client.send(open_msg("new", tiny_fp), close_msg("new"))  # the stream itself goes on
    assert client.wait_summary("new").status == "closed"
    client.close()


def test_size_and_count_limits(start_sidecar, tiny_fp):
    limits = {"max_open_generations_per_client": 4}  # one client (127.0.0.1) here: the whole table its share
    sidecar = start_sidecar(max_open_generations_per_stream=3, max_open_generations=4, **limits)
    client = StreamClient(sidecar.address)
    at_limit_id = "i" * 256
    full_meta = {"tenant": "acme", "blob": "v" * (16384 - 14)}  # exactly 16384 bytes of keys + values
    cases = [
        (open_msg("i" * 257, tiny_fp), "INVALID_ARGUMENT", "over the 256-byte limit"),
        (open_msg("m", tiny_fp, **{**full_meta, "blob": full_meta["blob"] + "x"}), "INVALID_ARGUMENT", "16384-byte"),
        (open_msg("e", tiny_fp, **{f"k{i}": "" for i in range(65)}), "INVALID_ARGUMENT", "65 metadata entries"),
        (chunk_msg("x" * 100_000, 1, rows(1), [0]), "INVALID_ARGUMENT", "over the 256-byte limit"),
    ]
    for message, _, _ in cases:
        client.send(message)
    client.send(open_msg(at_limit_id, tiny_fp, **full_meta), open_msg("b", tiny_fp), open_msg("c", tiny_fp))
    client.send(open_msg("d", tiny_fp))  # a 4th on this stream
    client.wait_for(lambda rs: sum(r.WhichOneof("msg") == "error" for r in rs) >= len(cases) + 1)
    errors = client.of("error")
    for (_, code, text), error in zip(cases, errors):
        assert error.code_name == code and text in error.message, (error.code_name, error.message)
    assert len(errors[3].generation_id) < 300  # an oversized id is not echoed back in full
    assert errors[-1].code_name == "RESOURCE_EXHAUSTED" and "--max-open-generations-per-stream 3" in errors[-1].message
    other = StreamClient(sidecar.address)
    other.send(open_msg("e1", tiny_fp), open_msg("e2", tiny_fp))  # the 5th open generation in total
    (error,) = other.wait_error("e2")
    assert error.code_name == "RESOURCE_EXHAUSTED" and "--max-open-generations 4" in error.message
    client.send(chunk_msg(at_limit_id, 1, rows(1), [0]), close_msg(at_limit_id))
    summary = client.wait_summary(at_limit_id)
    assert summary.status == "closed" and summary.tokens_scored == 1
    for gid in ("b", "c"):
        client.send(close_msg(gid))
    other.send(close_msg("e1"))
    other.wait_summary("e1")
    client.close()
    other.close()
    assert rejected(sidecar, "INVALID_ARGUMENT") == 4 and rejected(sidecar, "RESOURCE_EXHAUSTED") == 2


def test_undecodable_messages_are_answered_and_counted(start_sidecar, tiny_fp):
    """Invalid UTF-8 in a string field used to end the whole stream with INTERNAL, uncounted."""
    sidecar = start_sidecar()
    channel = grpc.insecure_channel(sidecar.address)
    raw = channel.stream_stream(
        "/probewatch.v1.Monitor/Monitor",
        request_serializer=lambda b: b,
        response_deserializer=pb.MonitorResponse.FromString,
    )
    bad_utf8 = bytearray(open_msg("gen-bad", tiny_fp).SerializeToString())
    bad_utf8[bad_utf8.index(b"gen-bad") + 4] = 0xFF
    feed: queue.Queue = queue.Queue()
    call = raw(iter(feed.get, None), timeout=30)
    for message in (
        open_msg("ok", tiny_fp).SerializeToString(),
        bytes(bad_utf8),
        b"\xff\xff\xff\xff garbage",
        chunk_msg("ok", 1, rows(1), [0]).SerializeToString(),
        close_msg("ok").SerializeToString(),
    ):
        feed.put(message)
    responses = []
    for response in call:
        responses.append(response)
        if response.WhichOneof("msg") == "summary":
            break
    feed.put(None)
    errors = [r.error for r in responses if r.WhichOneof("msg") == "error"]
    assert [e.code_name for e in errors] == ["INVALID_ARGUMENT", "INVALID_ARGUMENT"]
    assert "invalid UTF-8" in errors[0].message and "does not parse" in errors[1].message
    assert responses[-1].summary.status == "closed" and responses[-1].summary.tokens_scored == 1
    # unary calls too: INVALID_ARGUMENT, not INTERNAL
    score = channel.unary_unary(
        "/probewatch.v1.Monitor/Score",
        request_serializer=lambda b: b,
        response_deserializer=pb.ScoreResponse.FromString,
    )
    request = bytearray(pb.ScoreRequest(probe_ids=["dec"]).SerializeToString())
    request[-1] = 0xFF
    with pytest.raises(grpc.RpcError) as err:
        score(bytes(request), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "invalid UTF-8" in err.value.details()
    assert rejected(sidecar, "INVALID_ARGUMENT") == 3


def test_outbox_of_a_client_that_stops_reading_is_bounded(start_sidecar, tiny_fp):
    sidecar = start_sidecar(outbox_size=16)
    feed: queue.Queue = queue.Queue()
    call = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).Monitor(iter(feed.get, None))
    feed.put(open_msg("r", tiny_fp))
    for i in range(20000):  # each answered with an Error, which is never read
        feed.put(chunk_msg(f"ghost{i}", 1, rows(1), [0]))
    wait_until(lambda: rejected(sidecar, "RESOURCE_EXHAUSTED") == 1, 60, "the outbox overflow")
    wait_until(
        lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="aborted") == 1,
        30,
        "its generation to end aborted",
    )
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_active_streams") == 0
    with pytest.raises(grpc.RpcError) as err:
        for _ in call:
            pass
    assert err.value.code() == grpc.StatusCode.CANCELLED
    feed.put(None)
    bystander = StreamClient(sidecar.address)  # everyone else is served as before
    bystander.send(open_msg("b", tiny_fp), close_msg("b"))
    assert bystander.wait_summary("b").status == "closed"
    bystander.close()


# -- extreme values, and the threads that must survive them ----------------------------------------------------
class _Hook(BaseHTTPRequestHandler):
    received: ClassVar[list] = []

    def do_POST(self):
        type(self).received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_receiver():
    handler = type("Hook", (_Hook,), {"received": []})
    server = HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook", handler.received
    server.shutdown()


def test_huge_rows_are_refused_and_the_webhook_keeps_delivering(webhook_receiver, start_sidecar, tiny_fp):
    url, received = webhook_receiver
    huge = np.full((1, D_TINY), 3e38, np.float32)
    # default: the activation bound refuses the row before scoring (no trace: the position can be resent)
    sidecar = start_sidecar(webhook_url=url)
    client = StreamClient(sidecar.address)
    client.send(open_msg("h", tiny_fp), chunk_msg("h", 1, huge, [0]), chunk_msg("h", 1, 0 * huge, [0]), close_msg("h"))
    summary = client.wait_summary("h")
    (error,) = client.of("error", "h")
    assert error.code_name == "INVALID_ARGUMENT" and "--max-abs-activation" in error.message
    assert summary.tokens_scored == 1 and not any(r.flagged for r in summary.results)
    assert all(np.isfinite(r.score) for r in summary.results if r.n_tokens)
    client.close()
    # with the bound off, the worker refuses rows whose scores overflow float32; nothing is flagged, and
    # the next hot generation is still delivered (the webhook thread used to die on an inf score)
    sidecar = start_sidecar(webhook_url=url, max_abs_activation=float("inf"))
    client = StreamClient(sidecar.address)
    client.send(open_msg("inf", tiny_fp), chunk_msg("inf", 1, huge, [0]), close_msg("inf"))
    summary = client.wait_summary("inf")
    (error,) = client.of("error", "inf")
    assert error.code_name == "INVALID_ARGUMENT" and "scores non-finite" in error.message
    assert summary.rejected_chunks == 1 and not summary.alerts and not any(r.flagged for r in summary.results)
    # a huge but finite projection scores a huge, finite logit: alerted and delivered as a number
    proj = np.full((1, sidecar.runtime.stacks[1].k), 3e38, np.float32)
    client.send(open_msg("big", tiny_fp), chunk_msg("big", 1, proj, [0], kind=pb.PAYLOAD_KIND_PROJECTIONS))
    client.send(close_msg("big"), open_msg("hot", tiny_fp), chunk_msg("hot", 1, hot_row(sidecar), [0]))
    client.send(close_msg("hot"))
    assert client.wait_summary("big").alerts[0].score == pytest.approx(3e38, rel=1e-6)
    assert client.wait_summary("hot").alerts[0].probe_id == "dec"
    client.close()
    wait_until(
        lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_webhook_deliveries_total", outcome="ok") == 2,
        30,
        "two webhook deliveries",
    )
    assert [(b["generation_id"], b["probe"]) for b in received[-2:]] == [("big", "dec"), ("hot", "dec")]
    assert received[-2]["score"] == pytest.approx(3e38, rel=1e-6)
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_webhook_deliveries_total", outcome="failed") == 0
    for component in ("scoring", "stream", "webhook", "retention"):
        assert metric_value(text, "probewatch_internal_errors_total", component=component) == 0


def test_webhook_thread_survives_payloads_it_cannot_send(webhook_receiver):
    from probewatch.server.sidecar.webhook import WebhookSender

    url, received = webhook_receiver
    outcomes, errors = [], []
    sender = WebhookSender(url, on_outcome=outcomes.append, on_error=lambda: errors.append(1), base_delay_s=0.01)
    sender.submit({"score": float("inf"), "aggregate": float("nan"), "n": 1})  # non-finite: sent as null
    sender.submit({"bad": object()})  # cannot be encoded: counted as failed and as an internal error
    sender.submit({"n": 3})
    sender.close(10)
    assert outcomes == ["ok", "failed", "ok"] and errors == [1]
    assert received == [{"score": None, "aggregate": None, "n": 1}, {"n": 3}]


def test_an_incident_erased_while_its_generation_runs_stays_erased(start_sidecar, tmp_path, tiny_fp):
    from probewatch.server.store import IncidentStore

    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    client.send(open_msg("erase", tiny_fp), chunk_msg("erase", 1, hot_row(sidecar), [0]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "alert" for r in rs))
    (alert,) = client.of("alert", "erase")
    store = IncidentStore.open(tmp_path / "incidents.sqlite3")
    assert store.delete(ids=[alert.incident_id]) == 1  # `probewatch incidents delete` from another process
    client.send(close_msg("erase", prompt="private", response="private"))
    summary = client.wait_summary("erase")
    client.close()
    assert summary.alerts[0].incident_id == 0 and store.count() == 0
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_incident_store_errors_total") == 0
