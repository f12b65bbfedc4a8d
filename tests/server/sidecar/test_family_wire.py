"""Families on the wire (issue 22): ListProbes names each family (members, their types, threshold) and marks
its members; unary Score takes a family id and answers the maximum of its members' aggregates with the
leading member's token scores and name, exactly as the members scored alone; a stream's summary names
the leading member too. A family whose member reads a layer the request lacks is refused naming it."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from probewatch.proto.codec import decode_tensor, encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from tests.server.conftest import D_TINY
from tests.server.family_helpers import MEMBER_TYPES, MEMBERS, family_folder
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, open_msg

PROMPT = 2
MEMBER_IDS = [m for m, _, _ in MEMBERS]


@pytest.fixture
def sidecar(start_sidecar, tiny_bundles, tiny_fp, tmp_path):
    return start_sidecar([*tiny_bundles, family_folder(tmp_path, tiny_fp, threshold=0.5)])


def _rows(n: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, D_TINY)) * 2.0).astype(np.float32)


def _request(fp: str, rows: dict[int, np.ndarray], probe_ids: list[str]) -> pb.ScoreRequest:
    layers = [
        pb.LayerPayload(layer=layer, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(x))
        for layer, x in rows.items()
    ]
    return pb.ScoreRequest(model_fingerprint=fp, prompt_length=PROMPT, layers=layers, probe_ids=probe_ids)


def test_list_probes_names_the_family_and_marks_its_members(sidecar):
    listing = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).ListProbes(pb.ListProbesRequest(), timeout=10)
    (family,) = listing.families
    assert family.id == "fam" and family.behaviour == "deception" and family.threshold == 0.5
    assert list(family.member_ids) == MEMBER_IDS and list(family.member_types) == list(MEMBER_TYPES)
    assert not family.HasField("uncertain_from") and family.model_fingerprint
    probes = {p.id: p for p in listing.probes}
    assert "fam" not in probes  # a family is no bundle: it has no layer or weights of its own
    assert {m: probes[m].family for m in MEMBER_IDS} == dict.fromkeys(MEMBER_IDS, "fam")
    assert probes["dec"].family == "" and list(probes["dec"].layers) == [1]
    assert {m: list(probes[m].layers) for m in MEMBER_IDS} == {"fam-sand": [1], "fam-deny": [3], "fam-omit": [2]}


def test_unary_score_of_a_family_is_the_max_of_its_members(sidecar, tiny_fp):
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    rows = {layer: _rows(9, 40 + layer) for layer in (1, 2, 3)}
    alone = {p.result.probe_id: p for p in stub.Score(_request(tiny_fp, rows, MEMBER_IDS), timeout=10).probes}
    assert set(alone) == set(MEMBER_IDS)  # members asked for by name: no family result added
    (fam,) = stub.Score(_request(tiny_fp, rows, ["fam"]), timeout=10).probes  # only what was asked for
    scores = {m: alone[m].result.score for m in MEMBER_IDS}
    leader = max(scores, key=scores.get)
    assert fam.result.probe_id == "fam" and fam.result.member == leader
    assert fam.result.score == scores[leader] and fam.result.threshold == 0.5
    assert fam.result.flagged is (scores[leader] >= 0.5) and fam.result.aggregation == "max"
    assert list(fam.positions) == list(alone[leader].positions) == list(range(PROMPT, 9))
    np.testing.assert_array_equal(decode_tensor(fam.token_scores), decode_tensor(alone[leader].token_scores))
    # every probe: the family joins its members when the request carries all their layers
    every = {p.result.probe_id: p.result for p in stub.Score(_request(tiny_fp, rows, []), timeout=10).probes}
    assert {"dec", "avg", "ref", "fam", *MEMBER_IDS} <= set(every)
    assert every["fam"].score == fam.result.score and every["dec"].member == "" and every["fam-sand"].member == ""
    without_3 = {k: v for k, v in rows.items() if k != 3}
    partial = {p.result.probe_id for p in stub.Score(_request(tiny_fp, without_3, []), timeout=10).probes}
    assert "fam" not in partial and "fam-deny" not in partial and "fam-sand" in partial


def test_unary_score_of_a_family_refuses_a_missing_member_layer_and_unknown_ids(sidecar, tiny_fp):
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    rows = {layer: _rows(6, 50 + layer) for layer in (1, 2)}
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(_request(tiny_fp, rows, ["fam"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "probe fam reads layer(s) [3], which the request does not carry" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.Score(_request(tiny_fp, rows, ["fam", "famous"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "unknown probe(s) famous" in err.value.details() and "fam-omit, fam" in err.value.details()
    # the sidecar keeps serving
    (ok,) = stub.Score(_request(tiny_fp, {**rows, 3: _rows(6, 53)}, ["fam"]), timeout=10).probes
    assert ok.result.member in MEMBER_IDS


def test_stream_summary_names_the_leading_member(sidecar, tiny_fp):
    client = StreamClient(sidecar.address)
    try:
        n = 7
        client.send(open_msg("g-fam", tiny_fp, prompt_length=PROMPT))
        for layer in (1, 2, 3):
            client.send(chunk_msg("g-fam", layer, _rows(n, 60 + layer), range(n)))
        client.send(close_msg("g-fam"))
        summary = client.wait_summary("g-fam")
    finally:
        client.close()
    results = {r.probe_id: r for r in summary.results}
    members = {m: results[m].score for m in MEMBER_IDS}
    assert results["fam"].member == max(members, key=members.get)
    assert results["fam"].score == max(members.values())
    assert all(results[m].member == "" for m in MEMBER_IDS) and results["dec"].member == ""
