"""Memory and fairness limits of the sidecar, over real gRPC on localhost: the scoring queue's byte
budget (and its default from the container's cgroup memory limit), each client's share of the
open-generation table, and the idle TTL of generations. Each refusal has its precise status and count."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from probewatch.errors import ProbewatchError
from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.sidecar.config import make_config
from probewatch.server.sidecar.memory import container_memory_limit, default_queue_bytes
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.waiting import wait_until

RNG = np.random.default_rng(7)
MiB = 1 << 20
GiB = 1 << 30
TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"


def rows(n: int) -> np.ndarray:
    return RNG.standard_normal((n, D_TINY)).astype(np.float32)


def scored(responses: list[pb.MonitorResponse], gid: str) -> int:
    """Positions scored so far for `gid` (over its ScoreUpdates)."""
    return sum(
        len(r.score.positions) for r in responses if r.WhichOneof("msg") == "score" and r.score.generation_id == gid
    )


# -- the scoring queue's byte budget -----------------------------------------------------------------------
def test_queue_byte_budget_sheds_big_chunks_and_other_streams_keep_scoring(start_sidecar, tiny_fp):
    n = 4096  # rows of 64 float32: 1 MiB per chunk, + 32 KiB of int64 positions
    chunk_bytes = n * D_TINY * 4 + n * 8
    budget = 3 * chunk_bytes + chunk_bytes // 2  # room for three chunks
    sidecar = start_sidecar(max_message_bytes=2 * MiB, queue_bytes=budget)
    clients = [StreamClient(sidecar.address) for _ in range(5)]
    for i, c in enumerate(clients):
        c.send(open_msg(f"b{i}", tiny_fp))
    wait_until(lambda: len(sidecar.engine.generations) == 5, 10, "five open generations")
    with sidecar.engine.hold():  # nothing is scored: queued bytes only grow
        for i, c in enumerate(clients):
            c.send(chunk_msg(f"b{i}", 1, rows(n), range(n)))
        wait_until(lambda: sum(len(c.of("error")) for c in clients) >= 2, 15, "two chunks shed")
        time.sleep(0.2)  # nothing else is refused: three chunks fit
        text = scrape(sidecar.metrics_port)
        assert metric_value(text, "probewatch_queue_bytes") == 3 * chunk_bytes  # the held one counts too
        assert metric_value(text, "probewatch_queue_bytes_capacity") == budget
        # a unary Score that does not fit either: RESOURCE_EXHAUSTED at once, not after put_timeout_s
        stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
        layer = pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(rows(n)))
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(pb.ScoreRequest(layers=[layer]), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "--queue-bytes" in err.value.details()
        assert time.monotonic() - t0 < 1.0
    errors = [e for c in clients for e in c.of("error")]
    assert len(errors) == 2
    assert all(e.code_name == "RESOURCE_EXHAUSTED" and "--queue-bytes" in e.message for e in errors)
    shed = {e.generation_id for e in errors}
    for i, c in enumerate(clients):
        if f"b{i}" not in shed:
            c.wait_for(lambda rs, gid=f"b{i}": scored(rs, gid) == n)
    wait_until(lambda: sidecar.engine.budget.used == 0, 10, "the queue drained")
    for i, c in enumerate(clients):  # the streams that were shed score again once the queue drained
        if f"b{i}" in shed:
            c.send(chunk_msg(f"b{i}", 1, rows(n), range(n, 2 * n)))
            c.wait_for(lambda rs, gid=f"b{i}": scored(rs, gid) == n)
    for i, c in enumerate(clients):
        c.send(close_msg(f"b{i}"))
        summary = c.wait_summary(f"b{i}")
        assert (summary.tokens_scored, summary.dropped_chunks) == (n, 1 if f"b{i}" in shed else 0)
        c.close()
    assert sidecar.engine.budget.peak <= budget  # what the gauge reads never passed the budget
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_dropped_chunks_total", reason="queue_bytes") == 2
    assert metric_value(text, "probewatch_queue_bytes") == 0


def test_container_memory_limit_from_cgroup_files(tmp_path):
    proc = tmp_path / "cgroup"
    root = tmp_path / "fs"
    root.mkdir()
    assert container_memory_limit(root, proc) is None  # nothing to read: unknown
    (root / "memory.max").write_text("max\n")  # cgroup v2, namespaced, no limit
    assert container_memory_limit(root, proc) is None
    (root / "memory.max").write_text("2147483648\n")
    assert container_memory_limit(root, proc) == 2 * GiB
    # cgroup v2 without a cgroup namespace: the process's own cgroup, named in /proc/self/cgroup
    (root / "kubepods" / "pod1").mkdir(parents=True)
    (root / "kubepods" / "pod1" / "memory.max").write_text("1073741824\n")
    proc.write_text("0::/kubepods/pod1\n")
    assert container_memory_limit(root, proc) == GiB
    v1 = tmp_path / "v1"
    (v1 / "memory").mkdir(parents=True)
    (v1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "unlimited"
    assert container_memory_limit(v1, tmp_path / "none") is None
    (v1 / "memory" / "memory.limit_in_bytes").write_text("536870912\n")
    assert container_memory_limit(v1, tmp_path / "none") == 512 * MiB
    (v1 / "memory" / "memory.limit_in_bytes").write_text("garbage\n")
    assert container_memory_limit(v1, tmp_path / "none") is None


def test_default_queue_bytes_from_the_memory_limit(tmp_path):
    assert default_queue_bytes(2 * GiB, 16 * MiB) == 512 * MiB  # the chart's 2 Gi: a quarter
    assert default_queue_bytes(64 * GiB, 16 * MiB) == GiB  # capped
    assert default_queue_bytes(128 * MiB, 16 * MiB) == 64 * MiB  # floor
    assert default_queue_bytes(None, 16 * MiB) == 512 * MiB  # no limit
    assert default_queue_bytes(GiB, 256 * MiB) == 512 * MiB  # never below two of the largest messages
    (tmp_path / "memory.max").write_text("2147483648\n")
    config = make_config(model_id="m", fingerprint="fp")
    assert config.queue_budget(cgroup_root=tmp_path) == 512 * MiB
    assert make_config(model_id="m", fingerprint="fp", queue_bytes=32 * MiB).queue_budget(tmp_path) == 32 * MiB
    with pytest.raises(ProbewatchError, match="queue_bytes"):
        make_config(model_id="m", fingerprint="fp", queue_bytes=MiB)  # below the 16 MiB largest message


def test_queue_bytes_flag_takes_kubernetes_quantities():
    from probewatch.arguments import byte_size

    assert [byte_size(v) for v in ("536870912", "512Mi", "1Gi", "2G", "64MiB")] == [
        512 * MiB,
        512 * MiB,
        GiB,
        2 * 10**9,
        64 * MiB,
    ]
    with pytest.raises(Exception, match="not a byte size"):
        byte_size("lots")


# -- each client's share of the open-generation table ----------------------------------------------------------
def test_a_client_filling_its_share_does_not_lock_out_another(start_sidecar, tmp_path, tiny_fp):
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{TOKEN_A}\n{TOKEN_B}\n")
    sidecar = start_sidecar(auth_token_file=token_file, max_open_generations=8, max_open_generations_per_client=2)
    a1, a2 = StreamClient(sidecar.address, TOKEN_A), StreamClient(sidecar.address, TOKEN_A)
    a1.send(open_msg("a0", tiny_fp), open_msg("a1", tiny_fp))
    wait_until(lambda: len(sidecar.engine.generations) == 2, 10, "client A's two generations")
    a2.send(open_msg("a2", tiny_fp))  # another stream of the same token: the same client
    (error,) = a2.wait_error("a2")
    assert error.code_name == "RESOURCE_EXHAUSTED" and "--max-open-generations-per-client 2" in error.message
    b = StreamClient(sidecar.address, TOKEN_B)  # same address, other token: its own share
    b.send(open_msg("b0", tiny_fp), open_msg("b1", tiny_fp), chunk_msg("b0", 1, rows(1), [0]), close_msg("b0"))
    assert b.wait_summary("b0").status == "closed" and not b.of("error")
    a1.send(close_msg("a0"))  # closing one gives A room again
    a1.wait_summary("a0")
    a2.send(open_msg("a3", tiny_fp), close_msg("a3"))
    assert a2.wait_summary("a3").status == "closed"
    for c, gids in ((a1, ["a1"]), (b, ["b1"])):
        for gid in gids:
            c.send(close_msg(gid))
            c.wait_summary(gid)
    for c in (a1, a2, b):
        c.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_generation_limit_refusals_total", limit="per_client") == 1
    assert metric_value(text, "probewatch_generation_limit_refusals_total", limit="total") == 0
    assert metric_value(text, "probewatch_rejected_messages_total", code="RESOURCE_EXHAUSTED") == 1


def test_without_tokens_a_client_is_its_address_with_a_quarter_of_the_table(start_sidecar, tiny_fp):
    sidecar = start_sidecar(max_open_generations=8)  # default share: 8 // 4 = 2
    first, second = StreamClient(sidecar.address), StreamClient(sidecar.address)
    first.send(open_msg("p0", tiny_fp))
    second.send(open_msg("p1", tiny_fp))
    wait_until(lambda: len(sidecar.engine.generations) == 2, 10, "two generations")
    first.send(open_msg("p2", tiny_fp))
    (error,) = first.wait_error("p2")
    assert error.code_name == "RESOURCE_EXHAUSTED" and "--max-open-generations-per-client 2" in error.message
    for c, gid in ((first, "p0"), (second, "p1")):
        c.send(close_msg(gid))
        c.wait_summary(gid)
        c.close()


# -- idle TTL ----------------------------------------------------------------------------------------------------
def test_a_generation_without_traffic_expires_after_the_idle_ttl(start_sidecar, tiny_fp):
    sidecar = start_sidecar(generation_idle_ttl_s=0.6)
    client = StreamClient(sidecar.address)
    client.send(open_msg("idle", tiny_fp), open_msg("busy", tiny_fp), chunk_msg("idle", 1, rows(1), [0]))
    for i in range(15):  # the busy generation gets a chunk every 0.1 s for 1.5 s
        client.send(chunk_msg("busy", 1, rows(1), [i]))
        time.sleep(0.1)
    summary = client.wait_summary("idle", timeout=10)
    assert summary.status == "aborted" and summary.tokens_scored == 1
    (error,) = client.of("error", "idle")
    assert error.code_name == "DEADLINE_EXCEEDED" and "--generation-idle-ttl" in error.message
    client.send(close_msg("busy"))
    busy = client.wait_summary("busy")
    assert busy.status == "closed" and busy.tokens_scored == 15 and not client.of("error", "busy")
    client.close()
    text = scrape(sidecar.metrics_port)
    assert metric_value(text, "probewatch_generations_expired_total", reason="idle") == 1
    assert metric_value(text, "probewatch_generations_expired_total", reason="lifetime") == 0
    assert metric_value(text, "probewatch_generations_total", status="aborted") == 1
