"""Multi-layer probes in a real sidecar over gRPC: the plan asks for every layer a probe reads, and the
sidecar joins each token's per-layer partial scores (rows or pushdown projections) in whatever order and
chunking the layers arrive, to exactly the offline score; a layer that never arrives is an error naming
the probe, the layer and the positions (and a metric), never a score from part of the layers."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
import torch

from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.proto.codec import decode_tensor, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.sidecar.joins import JOINED_LAYER
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.server.multilayer_helpers import write_multilayer_bundles

ATOL = 1e-5
PROMPT = 3
KINDS = [pb.PAYLOAD_KIND_RESIDUAL_ROWS, pb.PAYLOAD_KIND_PROJECTIONS]


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_multilayer_bundles(tmp_path / "ml", tiny_fp)]


@pytest.fixture
def runtime(bundles, tiny_fp) -> ProbeRuntime:
    return ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))


def _rows(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, D_TINY)) * 2.0).astype(np.float32)


def _payload(runtime: ProbeRuntime, kind: int, layer: int, rows: np.ndarray) -> np.ndarray:
    if kind == pb.PAYLOAD_KIND_PROJECTIONS:
        return (torch.from_numpy(rows) @ runtime.stacks[layer].weight).numpy()
    return rows


def _joined(client: StreamClient, gid: str, pid: str) -> dict[int, float]:
    """Token scores of `pid` from the joined ScoreUpdates (layer -1)."""
    out: dict[int, float] = {}
    for u in client.of("score", gid):
        if u.layer == JOINED_LAYER and pid in u.probe_ids:
            scores = decode_tensor(u.scores)
            j = list(u.probe_ids).index(pid)
            out.update({int(p): float(scores[i, j]) for i, p in enumerate(u.positions)})
    return out


def test_plan_asks_for_every_layer_of_a_multi_layer_probe(start_sidecar, bundles, runtime):
    sidecar = start_sidecar(bundles)
    listing = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).ListProbes(pb.ListProbesRequest(), timeout=10)
    assert list(listing.layers) == [0, 1, 2, 3]  # layer 3 only for ml, layer 0 only for ml-all
    plans = {p.layer: p for p in listing.plans}
    assert list(plans[1].probe_ids) == ["dec", "ml"] and list(plans[3].probe_ids) == ["ml"]
    assert list(plans[0].probe_ids) == ["ml-all"] and list(plans[2].probe_ids) == ["avg", "ref", "ml-all"]
    assert plans[0].prompt_rows == pb.PROMPT_ROWS_ALL and plans[3].prompt_rows == pb.PROMPT_ROWS_NONE
    assert not any(p.rows_required for p in listing.plans)
    for layer, stack in runtime.stacks.items():  # each layer ships the probe's w_l as one pushdown column
        np.testing.assert_array_equal(decode_tensor(plans[layer].projection), stack.weight.numpy())
    assert {p.id: p.layer for p in listing.probes}["ml"] == 1


@pytest.mark.parametrize("kind", KINDS)
def test_layers_join_per_token_in_any_order_and_chunking(kind, start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    n = 12
    x = {layer: _rows(n, 20 + layer) for layer in range(4)}
    offline = runtime.score_layers({layer: torch.from_numpy(rows) for layer, rows in x.items()})
    # the order chunks arrive in: layer 3 wholly before layer 1; layers 0 and 2 interleaved, split differently
    order = [(3, 0, 5), (3, 5, 12), (1, 0, 2), (0, 0, 3), (2, 0, 4), (1, 2, 9), (0, 3, 12), (1, 9, 12), (2, 4, 12)]
    client.send(open_msg("g", tiny_fp, prompt_length=PROMPT))
    for layer, lo, hi in order:
        client.send(chunk_msg("g", layer, _payload(runtime, kind, layer, x[layer][lo:hi]), range(lo, hi), kind=kind))
    client.send(close_msg("g"))
    summary = client.wait_summary("g")
    assert not client.of("error", "g")
    results = {r.probe_id: r for r in summary.results}
    for pid, first in (("ml", PROMPT), ("ml-all", 0)):
        want = offline[pid].numpy()[first:]
        got = _joined(client, "g", pid)
        assert sorted(got) == list(range(first, n)), pid  # every selected token, once
        np.testing.assert_allclose([got[p] for p in range(first, n)], want, atol=ATOL)
        agg = aggregate(want, runtime.bundle(pid).manifest.aggregation)
        assert results[pid].score == pytest.approx(agg, abs=ATOL) and results[pid].n_tokens == n - first
    assert results["ml-all"].flagged and not results["ml"].flagged
    early = [a for a in summary.alerts if a.probe_id == "ml-all"]
    # raised in the chunk that completed positions 0-2 (layer 2's first), at its last joined position, as for one layer
    assert len(early) == 1 and early[0].early and early[0].position == 2
    # a layer's own update carries its single-layer probes only, never a multi-layer probe's partials
    for u in client.of("score", "g"):
        if u.layer != JOINED_LAYER:
            assert not {"ml", "ml-all"} & set(u.probe_ids)
    client.close()


def test_missing_layer_is_an_error_and_a_metric_not_a_wrong_score(start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    n = 12
    x = {1: _rows(n, 31), 3: _rows(n, 33)}
    offline = runtime.score_layers({0: torch.zeros(n, D_TINY), 2: torch.zeros(n, D_TINY), 1: torch.from_numpy(x[1]),
                                    3: torch.from_numpy(x[3])})["ml"].numpy()  # fmt: skip
    client.send(open_msg("g", tiny_fp, prompt_length=PROMPT))
    client.send(chunk_msg("g", 1, x[1][:10], range(10)))
    client.send(chunk_msg("g", 3, x[3][:4], range(4)))
    client.send(chunk_msg("g", 3, x[3][6:10], range(6, 10)))  # layer 3's chunk of positions 4-5 was lost
    client.wait_for(lambda rs: 9 in _joined(client, "g", "ml"))
    # once layer 3 has passed positions 4 and 5, they can never complete: left out and counted right away
    missing = {"probe": "ml", "layer": "3"}
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_layer_join_missing_tokens_total", **missing) == 2
    client.send(chunk_msg("g", 1, x[1][10:], range(10, n)))  # layer 3 never sends 10-11
    client.send(close_msg("g"))
    summary = client.wait_summary("g")
    (error,) = client.of("error", "g")
    assert error.code_name == "INVALID_ARGUMENT" and error.layer == 3
    assert (
        "probe ml reads layers [1, 3], but no row arrived on layer 3 for 4 of its selected tokens (positions 4..11)"
        in error.message
    ) and "(5 joined)" in error.message
    assert metric_value(scrape(sidecar.metrics_port), "probewatch_layer_join_missing_tokens_total", **missing) == 4
    kept = [3, 6, 7, 8, 9]
    assert sorted(_joined(client, "g", "ml")) == kept
    result = {r.probe_id: r for r in summary.results}["ml"]
    assert result.n_tokens == len(kept) and result.score == pytest.approx(float(offline[kept].mean()), abs=ATOL)
    client.close()


def test_unary_score_sums_the_layers_of_a_multi_layer_probe(start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    x = {layer: _rows(7, 40 + layer) for layer in (1, 3)}
    want = runtime.score_layers({layer: torch.from_numpy(rows) for layer, rows in x.items()})["ml"].numpy()[PROMPT:]
    for kind in KINDS:
        layers = [pb.LayerPayload(layer=layer, kind=kind, payload=encode_array(_payload(runtime, kind, layer, rows)))
                  for layer, rows in x.items()]  # fmt: skip
        response = stub.Score(
            pb.ScoreRequest(model_fingerprint=tiny_fp, prompt_length=PROMPT, layers=layers, probe_ids=["ml"]),
            timeout=10,
        )
        (probe,) = response.probes
        assert list(probe.positions) == list(range(PROMPT, 7))
        np.testing.assert_allclose(decode_tensor(probe.token_scores), want, atol=ATOL)
        assert probe.result.score == pytest.approx(float(want.mean()), abs=ATOL)
    one = [pb.LayerPayload(layer=1, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(x[1]))]
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(pb.ScoreRequest(model_fingerprint=tiny_fp, layers=one, probe_ids=["ml"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "probe ml reads layer(s) [3], which the request does not carry" in err.value.details()
