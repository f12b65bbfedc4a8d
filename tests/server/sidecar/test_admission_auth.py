"""Issue 20, items 3, 12 and 14 (sidecar side), over real gRPC on localhost: anonymous Health.Watch
floods cannot take Monitor slots, a token removed from the token file ends the streams admitted with
it, Health.Check answers NOT_SERVING while the sidecar drains, and an unauthenticated non-loopback
bind is refused unless explicitly allowed."""

from __future__ import annotations

import queue
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import _END, StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape

TOKEN_A = "token-a-0123456789abcdef"
TOKEN_B = "token-b-0123456789abcdef"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class AuthedClient(StreamClient):
    """StreamClient that sends `authorization: Bearer <token>` on its Monitor stream."""

    def __init__(self, address: str, token: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.MonitorStub(self.channel)
        self._requests: queue.Queue = queue.Queue()
        self.responses: list[pb.MonitorResponse] = []
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self._cv = threading.Condition()
        self.call = self.stub.Monitor(iter(self._requests.get, _END), metadata=bearer(token))
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def rejected(sidecar, code: str) -> float:
    return metric_value(scrape(sidecar.metrics_port), "probewatch_rejected_messages_total", code=code)


def zeros() -> np.ndarray:
    return np.zeros((1, D_TINY), np.float32)


def watch(channel: grpc.Channel, token: str | None = None):
    """(the Watch call, its first status or the RpcError that refused it)."""
    call = health_pb2_grpc.HealthStub(channel).Watch(
        health_pb2.HealthCheckRequest(), timeout=30, metadata=bearer(token) if token else None
    )
    try:
        return call, next(call).status
    except grpc.RpcError as exc:
        return call, exc


# -- item 3: anonymous Health.Watch has its own pool ------------------------------------------------------
def test_anonymous_watch_flood_never_takes_monitor_slots(start_sidecar, tmp_path, tiny_fp):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN_A}\n")
    # a Monitor pool of 2 per peer: had the 24 Watch calls below taken Monitor slots, nobody could score
    sidecar = start_sidecar(auth_token_file=token_file, max_streams=4, max_streams_per_peer=2)
    assert (sidecar.config.max_watch_streams, sidecar.config.max_watch_streams_per_peer) == (16, 4)
    channel = grpc.insecure_channel(sidecar.address)
    outcomes = [watch(channel) for _ in range(24)]
    calls = [call for call, _ in outcomes]
    try:
        statuses = [o for _, o in outcomes]
        assert statuses[:4] == [SERVING] * 4  # no token needed: the kubelet cannot send one
        for refused in statuses[4:]:
            assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "Health.Watch streams without a token (--max-watch-streams-per-peer 4)" in refused.details()
        assert rejected(sidecar, "RESOURCE_EXHAUSTED") == 20
        # authenticated clients still get both Monitor slots of their address, and score
        clients = [AuthedClient(sidecar.address, TOKEN_A) for _ in range(2)]
        for i, client in enumerate(clients):
            client.send(open_msg(f"g{i}", tiny_fp), chunk_msg(f"g{i}", 1, zeros(), [0]), close_msg(f"g{i}"))
            summary = client.wait_summary(f"g{i}")
            assert summary.status == "closed" and summary.tokens_scored == 1
        # Health.Check is a short call: it answers through the flood
        health = health_pb2_grpc.HealthStub(channel)
        t0 = time.perf_counter()
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=5).status == SERVING
        assert time.perf_counter() - t0 < 0.5
        # a Watch with a valid token is an authenticated stream: a Monitor slot, not the anonymous pool
        clients[1].close()
        authed_call, status = watch(channel, TOKEN_A)
        calls.append(authed_call)
        assert status == SERVING
        clients[0].close()
        assert rejected(sidecar, "RESOURCE_EXHAUSTED") == 20
    finally:
        for call in calls:
            call.cancel()
    # the anonymous pool's slots come back when Watch streams end
    deadline = time.monotonic() + 10
    while True:
        call, status = watch(channel)
        call.cancel()
        if status == SERVING or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert status == SERVING
    channel.close()


def test_anonymous_watch_total_cap(start_sidecar):
    sidecar = start_sidecar(max_watch_streams=2, max_watch_streams_per_peer=4)
    channel = grpc.insecure_channel(sidecar.address)
    outcomes = [watch(channel) for _ in range(3)]
    try:
        assert [o for _, o in outcomes[:2]] == [SERVING, SERVING]
        refused = outcomes[2][1]
        assert isinstance(refused, grpc.RpcError) and refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "(--max-watch-streams 2)" in refused.details()
        # without a token file every caller is anonymous, yet Monitor streams keep their own pool
        client = StreamClient(sidecar.address)
        client.send(open_msg("m", sidecar.config.fingerprint), close_msg("m"))
        assert client.wait_summary("m").status == "closed"
        client.close()
    finally:
        for call, _ in outcomes:
            call.cancel()
        channel.close()


# -- item 14: a removed token ends its streams ------------------------------------------------------------
def test_removed_token_ends_its_streams_within_the_reload_interval(start_sidecar, tmp_path, tiny_fp):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    sidecar = start_sidecar(auth_token_file=token_file)
    sidecar.tokens.reload_every_s = 0.3
    revoked, kept = AuthedClient(sidecar.address, TOKEN_A), AuthedClient(sidecar.address, TOKEN_B)
    revoked.send(open_msg("ra", tiny_fp), chunk_msg("ra", 1, zeros(), [0]))
    kept.send(open_msg("kb", tiny_fp), chunk_msg("kb", 1, zeros(), [0]))
    for client in (revoked, kept):
        client.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs))
    # the revoked client stays busy (a chunk every 20 ms): the check must not wait for an idle moment
    stop = threading.Event()

    def feed() -> None:
        position = 1
        while not stop.is_set() and not revoked.ended.is_set():
            revoked.send(chunk_msg("ra", 1, zeros(), [position]))
            position += 1
            time.sleep(0.02)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.5)
    token_file.write_text(f"{TOKEN_B}\n")  # rotation: A removed
    removed_at = time.monotonic()
    try:
        assert revoked.ended.wait(10)
        took = time.monotonic() - removed_at
    finally:
        stop.set()
        feeder.join(5)
    # the reload interval plus one housekeeping tick (1 s at the default limits)
    assert took < sidecar.tokens.reload_every_s + sidecar.servicer.tick_s + 1.0, took
    assert revoked.error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "removed from the token file" in revoked.error.details()
    summary = revoked.of("summary", "ra")[0]  # its generation ended aborted, summary sent first
    assert summary.status == "aborted" and summary.tokens_scored >= 2
    assert rejected(sidecar, "UNAUTHENTICATED") == 1
    # the other token's stream goes on
    kept.send(chunk_msg("kb", 1, zeros(), [1]), close_msg("kb"))
    assert kept.wait_summary("kb").status == "closed" and not kept.ended.is_set()
    kept.close()
    # and the removed token cannot open a new stream
    again = AuthedClient(sidecar.address, TOKEN_A)
    assert again.ended.wait(10) and again.error.code() == grpc.StatusCode.UNAUTHENTICATED


# -- item 14: Health.Check during drain -------------------------------------------------------------------
def test_health_check_answers_not_serving_while_draining(start_sidecar, tiny_fp):
    sidecar = start_sidecar()
    client = StreamClient(sidecar.address)
    client.send(open_msg("d", tiny_fp), chunk_msg("d", 1, zeros(), [0]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs))
    channel = grpc.insecure_channel(sidecar.address)
    health = health_pb2_grpc.HealthStub(channel)
    stopping = threading.Thread(target=sidecar.stop, args=(10.0,), daemon=True)
    t0 = time.monotonic()
    stopping.start()
    deadline = time.monotonic() + 5
    while not sidecar.draining and time.monotonic() < deadline:
        time.sleep(0.01)
    # the gRPC health protocol: the server answers, and says NOT_SERVING (the kubelet's probe fails cleanly)
    for service in ("", "probewatch.v1.Monitor"):
        response = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert response.status == NOT_SERVING
    # new streams and unary calls are refused UNAVAILABLE
    late = StreamClient(sidecar.address)
    assert late.ended.wait(10) and late.error.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(grpc.RpcError) as err:
        pb_grpc.MonitorStub(channel).ListProbes(pb.ListProbesRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE and "shutting down" in err.value.details()
    # the open generation still closes with its summary; then the stream ends and stop() returns early
    client.send(chunk_msg("d", 1, zeros(), [1]), close_msg("d"))
    summary = client.wait_summary("d")
    assert summary.status == "closed" and summary.tokens_scored == 2
    assert client.ended.wait(10) and client.error.code() == grpc.StatusCode.UNAVAILABLE
    stopping.join(15)
    assert not stopping.is_alive() and time.monotonic() - t0 < 6  # it did not sit out the 10 s grace
    channel.close()


# -- item 12: no unauthenticated non-loopback bind without --allow-insecure -------------------------------
def test_serve_refuses_an_unauthenticated_public_bind(tmp_path, tiny_fp, tiny_bundles, capsys):
    import subprocess
    import sys

    from probewatch.cli.main import main

    model = ["--fingerprint", tiny_fp, *(a for b in tiny_bundles for a in ("--bundles", str(b)))]
    base = ["serve", "--port", "0", "--metrics-port", "-1", "--no-incidents", *model]
    # a real process: exit status 2 and one clear line, before anything is loaded or bound
    proc = subprocess.run(
        [sys.executable, "-m", "probewatch.cli.main", *base, "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("probewatch: error: refusing to serve gRPC on 0.0.0.0 with neither a bearer token")
    assert "--auth-token-file" in line and "--allow-insecure" in line
    # server-only TLS encrypts but admits anyone: still refused; an IPv6 wildcard too
    (tmp_path / "c.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    tls = ["--tls-cert", str(tmp_path / "c.pem"), "--tls-key", str(tmp_path / "c.pem")]
    for extra in (["--host", "0.0.0.0", *tls], ["--host", "[::]"]):
        assert main([*base, *extra]) == 2
        assert "refusing to serve gRPC on" in capsys.readouterr().err


def test_allow_insecure_serves_and_says_so(tmp_path, tiny_fp, tiny_bundles):
    from probewatch.benchmarks.harness import SidecarProcess

    args = ["--fingerprint", tiny_fp, "--metrics-port", "-1", "--no-incidents"]
    args += [a for b in tiny_bundles for a in ("--bundles", str(b))]
    with SidecarProcess([*args, "--host", "0.0.0.0", "--allow-insecure"], tmp_path) as sidecar:
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(sidecar.address))
        assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
        log = sidecar.log_file.read_text()
    assert "WARNING" in log and "INSECURE (--allow-insecure): serving gRPC on 0.0.0.0" in log
    assert "INSECURE: no authentication (--allow-insecure)" in log


def test_sidecar_itself_refuses_an_unauthenticated_public_bind(tiny_fp, tiny_bundles, tmp_path):
    """The check lives in Sidecar.start too, so embedding code cannot skip it."""
    from probewatch.errors import ProbewatchError
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar

    settings = {"model_id": "tiny", "fingerprint": tiny_fp, "bundle_paths": tiny_bundles, "port": 0}
    settings |= {"host": "0.0.0.0", "metrics_port": None}
    with pytest.raises(ProbewatchError, match="refusing to serve gRPC on 0.0.0.0"):
        Sidecar(SidecarConfig(**settings)).start()
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN_A}\n")
    sidecar = Sidecar(SidecarConfig(**settings, auth_token_file=token_file)).start()
    try:
        assert sidecar.port
    finally:
        sidecar.stop(0)
