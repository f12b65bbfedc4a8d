"""Attention-pooling probes in a real sidecar over gRPC: the plan ships two pushdown columns per probe,
and rows or projections streamed token by token give, after every token, the offline aggregate of
that prefix (and v_t as the token score); unary Score agrees for both payload kinds."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.probes.aggregate import token_values
from probewatch.proto.codec import decode_tensor, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.server.attention_helpers import write_attention_bundles
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, open_msg

ATOL = 1e-5
PROMPT = 3


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_attention_bundles(tmp_path / "att", tiny_fp)]


@pytest.fixture
def runtime(bundles, tiny_fp) -> ProbeRuntime:
    return ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))


def _rows(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, D_TINY)) * 2.0).astype(np.float32)


def _offline(runtime: ProbeRuntime, layer: int, x: np.ndarray, pid: str) -> np.ndarray:
    return runtime.score_layers({layer: torch.from_numpy(x)})[pid].numpy()


def test_plan_ships_two_columns_per_attention_probe(start_sidecar, bundles, runtime):
    sidecar = start_sidecar(bundles)
    listing = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).ListProbes(pb.ListProbesRequest(), timeout=10)
    plans = {p.layer: p for p in listing.plans}
    assert list(plans[1].probe_ids) == ["dec", "att"] and not plans[1].rows_required
    assert decode_tensor(plans[1].projection).shape == (D_TINY, 3)  # dec, then att's a_t and v_t
    assert list(plans[2].probe_ids) == ["avg", "ref", "att-sharp"] and plans[2].prompt_rows == pb.PROMPT_ROWS_ALL
    np.testing.assert_array_equal(decode_tensor(plans[2].projection), runtime.stacks[2].weight.numpy())
    info = {p.id: p for p in listing.probes}
    assert info["att"].kind == "attention" and info["att"].aggregation == "attention"


@pytest.mark.parametrize("kind", [pb.PAYLOAD_KIND_RESIDUAL_ROWS, pb.PAYLOAD_KIND_PROJECTIONS])
def test_live_aggregate_after_every_token_equals_offline_prefix(kind, start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    n = 24
    x = {1: _rows(n, 1), 2: _rows(n, 2)}
    pairs = {"att": _offline(runtime, 1, x[1], "att"), "att-sharp": _offline(runtime, 2, x[2], "att-sharp")}
    assert np.ptp(pairs["att-sharp"][:, 0]) > 100  # sharp logits: the running max is what keeps exp finite
    first = {"att": PROMPT, "att-sharp": 0}  # response-only vs every token
    layer_of = {"att": 1, "att-sharp": 2}

    def payload(layer: int, rows: np.ndarray) -> np.ndarray:
        if kind == pb.PAYLOAD_KIND_PROJECTIONS:
            return (torch.from_numpy(rows) @ runtime.stacks[layer].weight).numpy()
        return rows

    client.send(open_msg("g", tiny_fp, prompt_length=PROMPT))
    for t in range(n):
        for layer in (1, 2):
            client.send(chunk_msg("g", layer, payload(layer, x[layer][t : t + 1]), [t], kind=kind))
            client.wait_for(
                lambda rs, t=t, layer=layer: any(
                    r.WhichOneof("msg") == "score" and r.score.layer == layer and t in r.score.positions for r in rs
                )
            )
        updates = {u.layer: u for u in client.of("score", "g") if t in u.positions}
        for pid, layer in layer_of.items():
            u = updates[layer]
            got = decode_tensor(u.scores)
            j = list(u.probe_ids).index(pid)
            assert got.shape == (1, len(u.probe_ids))  # one token score per probe: v_t
            assert got[0, j] == pytest.approx(float(pairs[pid][t, 1]), abs=ATOL)
            if t >= first[pid]:
                want = aggregate(pairs[pid][first[pid] : t + 1], runtime.bundle(pid).manifest.aggregation)
                assert u.aggregates[pid] == pytest.approx(want, abs=ATOL), (pid, t)
    client.send(close_msg("g"))
    results = {r.probe_id: r for r in client.wait_summary("g").results}
    for pid in layer_of:
        want = aggregate(pairs[pid][first[pid] :], runtime.bundle(pid).manifest.aggregation)
        assert results[pid].score == pytest.approx(want, abs=ATOL)
        assert results[pid].n_tokens == n - first[pid] and results[pid].aggregation == "attention"
        assert results[pid].flagged == (want >= 0.1)
    client.close()


def test_unary_score_rows_and_projections_agree_with_offline(start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    x = {1: _rows(9, 5), 2: _rows(9, 6)}
    by_kind = {}
    for kind in (pb.PAYLOAD_KIND_RESIDUAL_ROWS, pb.PAYLOAD_KIND_PROJECTIONS):
        layers = [
            pb.LayerPayload(
                layer=layer,
                kind=kind,
                payload=encode_array(
                    x[layer]
                    if kind == pb.PAYLOAD_KIND_RESIDUAL_ROWS
                    else (torch.from_numpy(x[layer]) @ stack.weight).numpy()
                ),
            )
            for layer, stack in sorted(runtime.stacks.items())
        ]
        response = stub.Score(
            pb.ScoreRequest(
                model_fingerprint=tiny_fp, prompt_length=PROMPT, layers=layers, probe_ids=["att", "att-sharp"]
            ),
            timeout=10,
        )
        by_kind[kind] = {p.result.probe_id: p for p in response.probes}
    for pid, layer, start in (("att", 1, PROMPT), ("att-sharp", 2, 0)):
        pairs = _offline(runtime, layer, x[layer], pid)[start:]
        want = aggregate(pairs, runtime.bundle(pid).manifest.aggregation)
        for got in by_kind.values():
            assert got[pid].result.score == pytest.approx(want, abs=ATOL)
            assert list(got[pid].positions) == list(range(start, 9))
            np.testing.assert_allclose(decode_tensor(got[pid].token_scores), token_values(pairs), atol=ATOL)
