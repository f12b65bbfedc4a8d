"""The sidecar over real gRPC on localhost: discovery, live stream, unary Score, health, reflection,
/metrics over HTTP, alerts and incidents, batching across streams, and every kind of bad input
(each answered precisely while the stream keeps serving its other generations)."""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch

from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.proto.codec import decode_tensor, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.store import IncidentStore
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape

RNG = np.random.default_rng(0)
REPO = Path(__file__).resolve().parents[3]


def contract_metric_names() -> set[str]:
    """Metric names in docs/architecture.md's "Prometheus metrics" table (a contract for dashboards)."""
    section = (REPO / "docs" / "architecture.md").read_text().split("### Prometheus metrics", 1)[1]
    section = re.split(r"\n#{2,3} ", section, maxsplit=1)[0]
    return set(re.findall(r"`(probewatch_[a-z0-9_]+)`", section))


def rows(n: int, d: int = D_TINY, scale: float = 1.0) -> np.ndarray:
    return (RNG.standard_normal((n, d)) * scale).astype(np.float32)


@pytest.fixture
def runtime(tiny_bundles, tiny_fp) -> ProbeRuntime:
    return ProbeRuntime(load_bundles(tiny_bundles, expected_fingerprint=tiny_fp))


def expected(runtime: ProbeRuntime, layer: int, x: np.ndarray) -> dict[str, np.ndarray]:
    scores = runtime.score(layer, torch.from_numpy(x)).numpy()
    return {pid: scores[:, j] for j, pid in enumerate(runtime.stacks[layer].probe_ids)}


# -- discovery, health, reflection ----------------------------------------------------------------------
def test_list_probes_gives_layers_and_pushdown_matrices(start_sidecar, runtime, tiny_fp):
    sidecar = start_sidecar()
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    listing = stub.ListProbes(pb.ListProbesRequest(), timeout=10)
    assert listing.model_fingerprint == tiny_fp and listing.d_model == D_TINY
    assert list(listing.layers) == [1, 2]
    assert {p.id for p in listing.probes} == {"dec", "avg", "ref"}
    plans = {p.layer: p for p in listing.plans}
    for layer, stack in runtime.stacks.items():
        assert list(plans[layer].probe_ids) == stack.probe_ids
        np.testing.assert_array_equal(decode_tensor(plans[layer].projection), stack.weight.numpy())
        assert not plans[layer].rows_required
    assert plans[1].prompt_rows == pb.PROMPT_ROWS_NONE  # only a response probe reads layer 1
    assert plans[2].prompt_rows == pb.PROMPT_ROWS_LAST  # the prompt_last probe reads layer 2
    assert listing.max_message_bytes == sidecar.config.max_message_bytes


def test_health_and_reflection(start_sidecar):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    # reflection is off unless asked for (it lists the services to anyone who can connect)
    default = reflection_pb2_grpc.ServerReflectionStub(grpc.insecure_channel(start_sidecar().address))
    with pytest.raises(grpc.RpcError) as off:
        next(default.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    sidecar = start_sidecar(reflection=True)
    channel = grpc.insecure_channel(sidecar.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "probewatch.v1.Monitor"):
        assert (
            health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
            == health_pb2.HealthCheckResponse.SERVING
        )
    refl = reflection_pb2_grpc.ServerReflectionStub(channel)
    answer = next(
        refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5)
    )
    names = {s.name for s in answer.list_services_response.service}
    assert {"probewatch.v1.Monitor", "grpc.health.v1.Health"} <= names


# -- the live stream ----------------------------------------------------------------------------------------
def test_stream_scores_every_chunk_and_aggregates_like_offline(start_sidecar, runtime, tiny_fp):
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    prompt = rows(4)
    steps = [rows(1) for _ in range(5)]
    client.send(
        open_msg("g1", tiny_fp, prompt_length=4),
        chunk_msg("g1", 2, prompt[3:], [3]),  # the prompt-last row for `ref`
        *[chunk_msg("g1", layer, x, [4 + i]) for i, x in enumerate(steps) for layer in (1, 2)],
        close_msg("g1", prompt="p?", response="r!"),
    )
    summary = client.wait_summary("g1")
    updates = client.of("score", "g1")
    # per-token scores back for every chunk (chunks the worker scored in one batch may share an update),
    # each row equal to the runtime's GEMM, every (layer, position) exactly once
    seen: list[tuple[int, int]] = []
    for u in updates:
        got = decode_tensor(u.scores)
        assert got.shape == (len(u.positions), len(u.probe_ids)) and list(u.positions) == sorted(u.positions)
        for i, position in enumerate(u.positions):
            seen.append((u.layer, position))
            x = prompt[3:] if position == 3 else steps[position - 4]
            exp = expected(runtime, u.layer, x)
            for j, pid in enumerate(u.probe_ids):
                np.testing.assert_allclose(got[i, j], exp[pid][0], atol=1e-5)
    assert sorted(seen) == sorted([(2, 3)] + [(layer, 4 + i) for i in range(5) for layer in (1, 2)])
    assert 1 <= len(updates) <= 11
    response_rows = {layer: np.concatenate(steps) for layer in (1, 2)}
    want = {
        "dec": aggregate(expected(runtime, 1, response_rows[1])["dec"], runtime.bundle("dec").manifest.aggregation),
        "avg": aggregate(expected(runtime, 2, response_rows[2])["avg"], runtime.bundle("avg").manifest.aggregation),
        "ref": float(expected(runtime, 2, prompt[3:])["ref"][0]),
    }
    results = {r.probe_id: r for r in summary.results}
    assert summary.status == "closed" and summary.tokens_scored == 6
    for pid, value in want.items():
        assert results[pid].score == pytest.approx(value, abs=1e-5)
        assert results[pid].flagged == (value >= runtime.bundle(pid).manifest.threshold.value)
    assert results["dec"].n_tokens == 5 and results["ref"].n_tokens == 1
    client.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_generations_total", status="closed") == 1
    assert metric_value(text, "probewatch_tokens_scored_total", mode="rows") == 11
    assert metric_value(text, "probewatch_token_score_count", probe="dec", behaviour="deception") == 5
    assert metric_value(text, "probewatch_generation_score_count", probe="ref", behaviour="refusal") == 1
    assert metric_value(text, "probewatch_active_streams") == 0


def test_projection_chunks_score_like_rows(start_sidecar, runtime, tiny_fp):
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    x = rows(3)
    proj = (torch.from_numpy(x) @ runtime.stacks[2].weight).numpy()
    client.send(
        open_msg("r", tiny_fp, 1),
        chunk_msg("r", 2, x, [0, 1, 2]),
        close_msg("r"),
        open_msg("p", tiny_fp, 1),
        chunk_msg("p", 2, proj, [0, 1, 2], kind=pb.PAYLOAD_KIND_PROJECTIONS),
        close_msg("p"),
    )
    by_rows = {r.probe_id: r.score for r in client.wait_summary("r").results}
    by_proj = {r.probe_id: r.score for r in client.wait_summary("p").results}
    for pid in ("avg", "ref"):
        assert by_proj[pid] == pytest.approx(by_rows[pid], abs=1e-5)
    client.close()
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_tokens_scored_total", mode="projections") == 3


def test_score_unary(start_sidecar, runtime, tiny_fp):
    sidecar = start_sidecar()
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    x1, x2 = rows(6), rows(6)
    request = pb.ScoreRequest(
        model_fingerprint=tiny_fp,
        prompt_length=3,
        layers=[
            pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(x1)),
            pb.LayerPayload(layer=2, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(x2)),
        ],
    )
    out = {p.result.probe_id: p for p in stub.Score(request, timeout=10).probes}
    assert set(out) == {"dec", "avg", "ref"}
    np.testing.assert_allclose(decode_tensor(out["dec"].token_scores), expected(runtime, 1, x1)["dec"][3:], atol=1e-5)
    assert list(out["dec"].positions) == [3, 4, 5] and list(out["ref"].positions) == [2]
    assert out["ref"].result.score == pytest.approx(float(expected(runtime, 2, x2)["ref"][2]), abs=1e-5)
    only = stub.Score(pb.ScoreRequest(prompt_length=3, layers=request.layers, probe_ids=["avg"]), timeout=10)
    assert [p.result.probe_id for p in only.probes] == ["avg"]

    def code(req):
        with pytest.raises(grpc.RpcError) as e:
            stub.Score(req, timeout=10)
        return e.value.code(), e.value.details()

    assert code(pb.ScoreRequest(layers=request.layers, probe_ids=["nope"])) == (
        grpc.StatusCode.NOT_FOUND,
        "unknown probe(s) nope; loaded probes: dec, avg, ref",
    )
    assert (
        code(pb.ScoreRequest(model_fingerprint="pwfp1:" + "00" * 16, layers=request.layers))[0]
        == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert code(pb.ScoreRequest(layers=request.layers[:1], probe_ids=["avg"]))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert code(pb.ScoreRequest())[0] == grpc.StatusCode.INVALID_ARGUMENT
    big = pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(rows(2000)))
    small_limit = start_sidecar(max_message_bytes=256 * 1024)
    small_stub = pb_grpc.MonitorStub(grpc.insecure_channel(small_limit.address))
    with pytest.raises(grpc.RpcError) as e:
        small_stub.Score(pb.ScoreRequest(layers=[big]), timeout=10)
    assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_rejected_messages_total", code="NOT_FOUND") == 1
    assert metric_value(text, "probewatch_rejected_messages_total", code="FAILED_PRECONDITION") == 1


# -- bad input on the stream ----------------------------------------------------------------------------------
def test_bad_chunks_get_precise_errors_and_the_stream_keeps_serving(start_sidecar, runtime, tiny_fp):
    sidecar = start_sidecar(max_message_bytes=64 * 1024)
    client = StreamClient(sidecar.address)
    good = rows(1)
    client.send(open_msg("ok", tiny_fp, 0), open_msg("bad", tiny_fp, 0), chunk_msg("ok", 1, good, [0]))
    nan = rows(2)
    nan[1, 5] = np.nan
    inf = rows(1)
    inf[0, 0] = np.inf
    wrong_len = chunk_msg("bad", 1, rows(2), [0, 1])
    wrong_len.chunk.payload.data = wrong_len.chunk.payload.data[:-4]
    wrong_dtype = chunk_msg("bad", 1, rows(1), [0])
    wrong_dtype.chunk.payload.dtype = pb.DTYPE_UNSPECIFIED
    cases = [
        (chunk_msg("bad", 1, rows(1, d=D_TINY + 1), [0]), "INVALID_ARGUMENT", "width 65 != expected 64"),
        (wrong_dtype, "INVALID_ARGUMENT", "unsupported dtype DTYPE_UNSPECIFIED"),
        (wrong_len, "INVALID_ARGUMENT", "needs 512 bytes but the message carries 508"),
        (chunk_msg("bad", 1, nan, [0, 1]), "INVALID_ARGUMENT", "1 row(s) contain NaN or Inf"),
        (chunk_msg("bad", 1, inf, [0]), "INVALID_ARGUMENT", "contain NaN or Inf"),
        (chunk_msg("bad", 7, rows(1), [0]), "INVALID_ARGUMENT", "no probe reads layer 7"),
        (
            chunk_msg("bad", 1, rows(1), [0], kind=pb.PAYLOAD_KIND_PROJECTIONS),
            "INVALID_ARGUMENT",
            "width 64 != expected 1",
        ),
        (chunk_msg("bad", 1, rows(300), range(300)), "RESOURCE_EXHAUSTED", "over the 65536-byte limit"),
        (chunk_msg("ghost", 1, rows(1), [0]), "NOT_FOUND", "unknown generation ghost"),
        (open_msg("other-model", "pwfp1:" + "00" * 16), "FAILED_PRECONDITION", "does not match the sidecar's"),
        (open_msg("ok", tiny_fp), "ALREADY_EXISTS", "already used"),
        (pb.MonitorRequest(), "INVALID_ARGUMENT", "empty MonitorRequest"),
    ]
    for message, _code, _text in cases:
        client.send(message)
    client.send(chunk_msg("bad", 1, good, [0]))  # a correct chunk after all that is accepted
    client.send(chunk_msg("bad", 1, good, [0]))  # ...but not twice at one position
    client.send(chunk_msg("ok", 1, good, [1]), close_msg("ok"), close_msg("bad"))
    client.send(chunk_msg("ok", 1, good, [2]))  # chunk after close
    ok_summary = client.wait_summary("ok")
    bad_summary = client.wait_summary("bad")
    client.wait_for(lambda rs: sum(r.WhichOneof("msg") == "error" for r in rs) >= len(cases) + 2)
    errors = client.of("error")
    for (_message, code, text), error in zip(cases, errors):
        assert error.code_name == code and text in error.message, (error.code_name, error.message)
        assert error.code == getattr(grpc.StatusCode, code).value[0]
    assert errors[len(cases)].code_name == "INVALID_ARGUMENT" and "already sent" in errors[len(cases)].message
    assert errors[-1].code_name == "FAILED_PRECONDITION" and "already closed" in errors[-1].message
    assert errors[0].generation_id == "bad" and errors[0].layer == 1
    # nothing recorded was lost: both generations scored their accepted chunks
    assert ok_summary.status == "closed" and ok_summary.tokens_scored == 2
    assert bad_summary.tokens_scored == 1 and bad_summary.rejected_chunks >= 8
    client.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_rejected_messages_total", code="INVALID_ARGUMENT") == 9
    for code in ("RESOURCE_EXHAUSTED", "NOT_FOUND", "ALREADY_EXISTS"):
        assert metric_value(text, "probewatch_rejected_messages_total", code=code) == 1
    assert metric_value(text, "probewatch_rejected_messages_total", code="FAILED_PRECONDITION") == 2


def test_message_over_the_transport_limit_ends_only_that_stream(start_sidecar, tiny_fp, tmp_path):
    sidecar = start_sidecar(max_message_bytes=64 * 1024)
    victim, bystander = StreamClient(sidecar.address), StreamClient(sidecar.address)
    bystander.send(open_msg("b", tiny_fp, 0), chunk_msg("b", 1, rows(1), [0]))
    # an alerting generation on the stream that will break: its incident must survive the abort
    hot = np.tile(sidecar.runtime.stacks[1].weight[:, 0].numpy(), (1, 1)) * 100
    victim.send(open_msg("v", tiny_fp, 0), chunk_msg("v", 1, hot.astype(np.float32), [0]))
    victim.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs))
    victim.send(chunk_msg("v", 1, rows(600), range(1, 601)))  # ~150 KiB > 2 x 64 KiB transport cap
    victim.ended.wait(10)
    assert victim.error is not None and victim.error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    bystander.send(chunk_msg("b", 1, rows(1), [1]), close_msg("b"))
    assert bystander.wait_summary("b").tokens_scored == 2
    bystander.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).find():
        time.sleep(0.05)
    incidents = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).find(generation_id="v")
    assert [(i.probe, i.generation_status, i.early) for i in incidents] == [("dec", "aborted", True)]
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_generations_total", status="aborted") == 1


def test_client_going_away_aborts_its_generations(start_sidecar, tiny_fp):
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    client.send(open_msg("gone", tiny_fp, 0), chunk_msg("gone", 1, rows(2), [0, 1]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs))
    client.call.cancel()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = scrape(sidecar.metrics_port)
        if metric_value(text, "probewatch_generations_total", status="aborted") == 1:
            break
        time.sleep(0.05)
    assert metric_value(text, "probewatch_generations_total", status="aborted") == 1
    assert metric_value(text, "probewatch_active_generations") == 0


# -- alerts, incidents, webhook -------------------------------------------------------------------------------
def test_alerts_incidents_and_metrics(start_sidecar, runtime, tiny_fp, tmp_path):
    sidecar = start_sidecar()
    w = runtime.stacks[1].weight[:, 0].numpy()
    calm = np.zeros((2, D_TINY), np.float32)
    hot = (w / np.dot(w, w) * 5.0)[None].astype(np.float32)  # dec score = 5 + bias 0.25 >= threshold 1.0
    client = StreamClient(sidecar.address)
    client.send(open_msg("g", tiny_fp, 2, tenant="acme"), chunk_msg("g", 1, calm, [2, 3]), chunk_msg("g", 1, hot, [4]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "alert" for r in rs))
    early = client.of("alert", "g")[0]
    assert early.early and early.probe_id == "dec" and early.position == 4 and early.incident_id > 0
    assert early.score == pytest.approx(5.25, abs=1e-4)
    # the row exists as soon as the alert is raised (crash-safe), its generation still open
    store = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True)
    assert store.get(early.incident_id).generation_status == "open"
    client.send(chunk_msg("g", 1, calm[:1], [5]), close_msg("g", prompt="the prompt", response="the response"))
    summary = client.wait_summary("g")
    client.close()
    assert [a.probe_id for a in summary.alerts] == ["dec"] and summary.alerts[0].incident_id == early.incident_id
    assert store.count() == 1  # completed in place, not written twice
    incident = store.get(summary.alerts[0].incident_id)
    assert (incident.generation_id, incident.probe, incident.behaviour, incident.status) == (
        "g",
        "dec",
        "deception",
        "open",
    )
    assert incident.score == pytest.approx(5.25, abs=1e-4) and incident.threshold == 1.0
    assert [p for p, _ in incident.token_scores] == [2, 3, 4, 5]
    assert incident.token_scores[2][1] == pytest.approx(5.25, abs=1e-4)
    assert (incident.prompt, incident.response) == ("the prompt", "the response")
    assert incident.model_fingerprint == tiny_fp and incident.bundle_version == "1" and incident.early
    assert incident.generation_status == "closed"
    assert incident.metadata == {"tenant": "acme"}
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_alerts_total", probe="dec", behaviour="deception") == 1
    assert metric_value(text, "probewatch_last_alert_timestamp_seconds", probe="dec") == pytest.approx(
        time.time(), abs=60
    )


def test_every_contract_metric_is_served_over_http(start_sidecar):
    from prometheus_client import generate_latest

    from probewatch.server.client.metrics import ClientMetrics

    sidecar = start_sidecar()
    text = scrape(sidecar.metrics_port) + generate_latest(ClientMetrics().registry).decode()
    families = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")}
    missing = contract_metric_names() - families
    assert not missing, f"in docs/architecture.md but not exported: {missing}"
    assert 'probewatch_bundle_info{behaviour="deception",fingerprint=' in text


def test_webhook_retries_then_delivers(start_sidecar, runtime, tiny_fp):
    import json
    from http.server import BaseHTTPRequestHandler, HTTPServer

    received, statuses = [], [500, 200]

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            status = statuses.pop(0) if statuses else 200
            received.append((status, body))
            self.send_response(status)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        sidecar = start_sidecar(webhook_url=f"http://127.0.0.1:{server.server_port}/hook")
        sidecar.webhook.base_delay_s = 0.05
        w = runtime.stacks[1].weight[:, 0].numpy()
        client = StreamClient(sidecar.address)
        client.send(
            open_msg("w", tiny_fp, 0),
            chunk_msg("w", 1, (w / np.dot(w, w) * 5)[None].astype(np.float32), [0]),
            close_msg("w"),
        )
        client.wait_summary("w")
        client.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and len(received) < 2:
            time.sleep(0.05)
        assert [s for s, _ in received] == [500, 200]
        body = received[-1][1]
        assert body["type"] == "probewatch.alert" and body["generation_id"] == "w" and body["probe"] == "dec"
        assert body["incident_id"] and body["model_fingerprint"] == tiny_fp
        deadline = time.monotonic() + 5
        while (
            time.monotonic() < deadline
            and metric_value(scrape(sidecar.metrics_port), "probewatch_webhook_deliveries_total", outcome="ok") < 1
        ):
            time.sleep(0.05)
        assert metric_value(scrape(sidecar.metrics_port), "probewatch_webhook_deliveries_total", outcome="ok") == 1
    finally:
        server.shutdown()


def test_webhook_gives_up_and_counts_failure(start_sidecar):
    from probewatch.server.sidecar.webhook import WebhookSender

    outcomes = []
    sender = WebhookSender(
        "http://127.0.0.1:9/unreachable", on_outcome=outcomes.append, max_attempts=3, base_delay_s=0.01, timeout_s=1
    )
    t0 = time.monotonic()
    assert sender.submit({"x": 1})
    assert time.monotonic() - t0 < 0.1  # submit never blocks
    sender.close(10)
    assert outcomes == ["failed"]


# -- batching and back-pressure ----------------------------------------------------------------------------------
def test_chunks_of_concurrent_streams_share_one_gemm_per_layer(start_sidecar, tiny_fp):
    sidecar = start_sidecar()
    clients = [StreamClient(sidecar.address) for _ in range(3)]
    with sidecar.engine.hold():
        for i, c in enumerate(clients):
            c.send(open_msg(f"s{i}", tiny_fp, 0), chunk_msg(f"s{i}", 1, rows(2), [0, 1]))
        deadline = time.monotonic() + 10
        while sidecar.engine._queue.qsize() < 2 and time.monotonic() < deadline:  # the worker holds the first
            time.sleep(0.01)
        assert metric_value(scrape(sidecar.metrics_port), "probewatch_queue_depth") >= 2
    for c in clients:
        c.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs))
        c.close()
    assert sidecar.engine.max_generations_per_gemm == 3


def test_chunks_scored_in_one_batch_come_back_as_one_update_before_the_summary(start_sidecar, runtime, tiny_fp):
    """Under load the worker batches a stream's chunks; their scores return as one ScoreUpdate per
    layer (positions concatenated, rows in order), and the summary never overtakes them."""
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    steps = [rows(1) for _ in range(6)]
    with sidecar.engine.hold():
        client.send(
            open_msg("m", tiny_fp, 0), *[chunk_msg("m", 1, x, [i]) for i, x in enumerate(steps)], close_msg("m")
        )
        deadline = time.monotonic() + 10
        while sidecar.engine._queue.qsize() < 6 and time.monotonic() < deadline:  # the worker holds the first
            time.sleep(0.01)
    summary = client.wait_summary("m")
    client.close()
    kinds = [r.WhichOneof("msg") for r in client.responses if getattr(r, r.WhichOneof("msg")).generation_id == "m"]
    assert kinds.index("summary") > max(i for i, k in enumerate(kinds) if k == "score")
    updates = client.of("score", "m")
    assert len(updates) < 6 and sum(len(u.positions) for u in updates) == 6  # merged, nothing lost
    merged = max(updates, key=lambda u: len(u.positions))
    assert len(merged.positions) >= 2 and list(merged.positions) == sorted(merged.positions)
    got = decode_tensor(merged.scores)
    for i, position in enumerate(merged.positions):
        exp = expected(runtime, 1, steps[position])
        for j, pid in enumerate(merged.probe_ids):
            np.testing.assert_allclose(got[i, j], exp[pid][0], atol=1e-5)
    assert summary.tokens_scored == 6


def test_full_queue_drops_and_counts(start_sidecar, tiny_fp):
    sidecar = start_sidecar(queue_size=1, put_timeout_s=0.2)
    client = StreamClient(sidecar.address)
    with sidecar.engine.hold():
        client.send(open_msg("q", tiny_fp, 0), *[chunk_msg("q", 1, rows(1), [i]) for i in range(4)])
        errors = client.wait_error("q", n=1)
        assert errors[0].code_name == "RESOURCE_EXHAUSTED" and "queue full" in errors[0].message
    client.send(close_msg("q"))
    summary = client.wait_summary("q")
    client.close()
    assert summary.dropped_chunks >= 1 and summary.tokens_scored + summary.dropped_chunks == 4
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_dropped_chunks_total", reason="queue_full") >= 1


def test_nan_aggregate_is_never_flagged(start_sidecar, tiny_fp):
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    client.send(open_msg("empty", tiny_fp, 0), close_msg("empty"))
    summary = client.wait_summary("empty")
    client.close()
    assert {r.probe_id for r in summary.results} == {"dec", "avg", "ref"}  # every loaded probe reports
    assert all(math.isnan(r.score) and not r.flagged and r.n_tokens == 0 for r in summary.results)
