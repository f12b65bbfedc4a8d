"""Token selection `answer` in a real sidecar over gRPC: the plan asks for every prompt row; a reply that is
an option letter is scored on the prompt tokens of the option it names, any other reply on its own tokens,
exactly as offline (`selection_mask` with the bundle's vocabulary); the reading follows the reply as it
grows ("A" is an answer, "A good" is not), by rows and by pushdown, single- and multi-layer, streamed and
unary, linear and attention-pooling; without token ids the probe reads the reply. An incident keeps what the probe read: the option's
tokens and its letter, or the reply's tokens (never the whole prompt)."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest
import torch

from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.proto.probewatch.v1 import monitor_pb2_grpc as pb_grpc
from probewatch.server.store import IncidentStore
from tests.server.answer_helpers import OPTION_A, OPTION_B, QUESTION, expected_positions, write_answer_bundles
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, close_msg, open_msg

ATOL = 1e-5
KINDS = [pb.PAYLOAD_KIND_RESIDUAL_ROWS, pb.PAYLOAD_KIND_PROJECTIONS]
LAYERS = (0, 1, 2)
ANSWER_PROBES = ("ans", "ans-ml", "ans-att")  # single-layer, multi-layer, attention pooling


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_answer_bundles(tmp_path / "ans", tiny_fp)]


@pytest.fixture
def runtime(bundles, tiny_fp) -> ProbeRuntime:
    return ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))


def _rows(n: int, seed: int) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {layer: (rng.standard_normal((n, D_TINY)) * 2.0).astype(np.float32) for layer in LAYERS}


def _payload(runtime: ProbeRuntime, kind: int, layer: int, rows: np.ndarray) -> np.ndarray:
    if kind == pb.PAYLOAD_KIND_PROJECTIONS:
        return (torch.from_numpy(rows) @ runtime.stacks[layer].weight).numpy()
    return rows


def _chunk(gid: str, layer: int, data: np.ndarray, positions, tokens, kind: int) -> pb.MonitorRequest:
    return pb.MonitorRequest(
        chunk=pb.ActivationChunk(
            generation_id=gid,
            layer=layer,
            kind=kind,
            positions=list(positions),
            token_ids=list(tokens),
            payload=encode_array(data),
        )
    )


def _ans_scores(runtime: ProbeRuntime, x: dict[int, np.ndarray]) -> np.ndarray:
    """The single-layer `ans` probe's offline token scores at every position."""
    return runtime.score_layers({layer: torch.from_numpy(rows) for layer, rows in x.items()})["ans"].numpy()


def _offline(runtime: ProbeRuntime, x: dict[int, np.ndarray], tokens: list[int], n_prompt: int) -> dict[str, float]:
    """Each answer probe's aggregate over the positions the rule picks (the offline scorer's numbers)."""
    scores = runtime.score_layers({layer: torch.from_numpy(rows) for layer, rows in x.items()})
    picked = expected_positions(tokens, n_prompt)
    return {
        pid: aggregate(scores[pid].numpy()[picked], runtime.bundle(pid).manifest.aggregation) for pid in ANSWER_PROBES
    }


def _stream(client, runtime, gid, x, tokens, n_prompt, kind, send_ids=True) -> dict[str, pb.ProbeResult]:
    """The prompt in one chunk per layer, then the reply one token at a time (each layer in turn)."""
    client.send(open_msg(gid, runtime.bundles[0].manifest.model.fingerprint, prompt_length=n_prompt))
    spans = [(0, n_prompt)] + [(p, p + 1) for p in range(n_prompt, len(tokens))]
    for lo, hi in spans:
        for layer in LAYERS:
            ids = tokens[lo:hi] if send_ids else []
            client.send(_chunk(gid, layer, _payload(runtime, kind, layer, x[layer][lo:hi]), range(lo, hi), ids, kind))
    client.send(close_msg(gid))
    summary = client.wait_summary(gid)
    assert not client.of("error", gid)
    return {r.probe_id: r for r in summary.results}


def test_plan_asks_for_every_prompt_row_of_an_answer_probe(start_sidecar, bundles):
    sidecar = start_sidecar(bundles)
    listing = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address)).ListProbes(pb.ListProbesRequest(), timeout=10)
    plans = {p.layer: p for p in listing.plans}
    assert plans[1].prompt_rows == pb.PROMPT_ROWS_ALL and plans[0].prompt_rows == pb.PROMPT_ROWS_ALL
    assert {p.id: p.token_selection for p in listing.probes}["ans"] == "answer"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("reply", "reads"),
    [
        ([11, 16, 17], OPTION_B),  # "(B) I think": option B's text
        ([18], OPTION_A),  # "A" as the whole reply
        ([16, 17], None),  # "I think": the reply's own tokens
        ([18, 19], None),  # "A good": no answer once the reply goes on
    ],
)
def test_answer_probe_reads_the_named_option_live_as_offline(kind, reply, reads, start_sidecar, bundles, runtime):
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    tokens = QUESTION + reply
    n_prompt = len(QUESTION)
    assert expected_positions(tokens, n_prompt) == (reads or list(range(n_prompt, len(tokens))))
    x = _rows(len(tokens), seed=len(reply) + 10 * kind)
    want = _offline(runtime, x, tokens, n_prompt)
    results = _stream(client, runtime, "g", x, tokens, n_prompt, kind)
    for pid in ANSWER_PROBES:
        assert results[pid].score == pytest.approx(want[pid], abs=ATOL), pid
        assert results[pid].n_tokens == len(reads or reply), pid
        assert results[pid].token_selection == "answer"
    client.close()


def test_the_reading_follows_the_reply_as_it_grows(start_sidecar, bundles, runtime, tiny_fp):
    """After "A" the running value is option A's; after "A good" it is the reply's again."""
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    tokens = QUESTION + [18, 19]
    n = len(QUESTION)
    x = _rows(len(tokens), seed=5)
    scores = _ans_scores(runtime, x)
    client.send(open_msg("g", tiny_fp, prompt_length=n))
    raw = pb.PAYLOAD_KIND_RESIDUAL_ROWS

    def running_after(lo: int, hi: int) -> float:
        client.send(_chunk("g", 1, x[1][lo:hi], range(lo, hi), tokens[lo:hi], raw))
        client.wait_for(lambda _: any(u.layer == 1 and hi - 1 in u.positions for u in client.of("score", "g")))
        (update,) = [u for u in client.of("score", "g") if u.layer == 1 and hi - 1 in u.positions]
        return update.aggregates["ans"]

    running_after(0, n)
    assert running_after(n, n + 1) == pytest.approx(float(scores[OPTION_A].mean()), abs=ATOL)
    assert running_after(n + 1, n + 2) == pytest.approx(float(scores[n : n + 2].mean()), abs=ATOL)
    client.close()


def test_without_token_ids_an_answer_probe_reads_the_reply(start_sidecar, bundles, runtime):
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    tokens = QUESTION + [11, 16]
    n = len(QUESTION)
    x = _rows(len(tokens), seed=7)
    scores = _ans_scores(runtime, x)
    results = _stream(client, runtime, "g", x, tokens, n, pb.PAYLOAD_KIND_RESIDUAL_ROWS, send_ids=False)
    assert results["ans"].score == pytest.approx(float(scores[n:].mean()), abs=ATOL)
    assert results["ans"].n_tokens == 2
    client.close()


def test_unary_score_reads_the_option_with_token_ids(start_sidecar, bundles, runtime, tiny_fp):
    sidecar = start_sidecar(bundles)
    stub = pb_grpc.MonitorStub(grpc.insecure_channel(sidecar.address))
    tokens = QUESTION + [11, 16, 17]
    n = len(QUESTION)
    x = _rows(len(tokens), seed=9)
    want = _offline(runtime, x, tokens, n)
    layers = [
        pb.LayerPayload(layer=layer, kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS, payload=encode_array(x[layer]))
        for layer in LAYERS
    ]

    def score(token_ids):
        request = pb.ScoreRequest(
            model_fingerprint=tiny_fp,
            prompt_length=n,
            layers=layers,
            probe_ids=list(ANSWER_PROBES),
            token_ids=token_ids,
        )
        return {p.result.probe_id: p for p in stub.Score(request, timeout=10).probes}

    got = score(tokens)
    for pid in ANSWER_PROBES:
        assert list(got[pid].positions) == OPTION_B and got[pid].result.score == pytest.approx(want[pid], abs=ATOL)
    plain = score([])  # no ids: the reply
    assert list(plain["ans"].positions) == list(range(n, len(tokens)))
    with pytest.raises(grpc.RpcError) as err:
        score(tokens[:-1])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"{len(tokens) - 1} token_ids for {len(tokens)} rows" in err.value.details()


@pytest.mark.parametrize(("reply", "reads", "letter"), [([11, 16, 17], OPTION_B, "B"), ([16, 17], None, None)])
def test_the_incident_keeps_what_the_answer_probe_read(reply, reads, letter, tmp_path, start_sidecar, runtime, tiny_fp):
    """The heatmap of an answer probe's incident is the option it read (positions, scores, letter), or the
    reply; the prompt's other tokens, scored only in case an option would be named, are not kept."""
    sidecar = start_sidecar(write_answer_bundles(tmp_path / "alerting", tiny_fp, threshold=-1e6))  # always alerts
    client = StreamClient(sidecar.address)
    tokens = QUESTION + reply
    n = len(QUESTION)
    x = _rows(len(tokens), seed=13)
    results = _stream(client, runtime, "g", x, tokens, n, pb.PAYLOAD_KIND_RESIDUAL_ROWS)
    client.close()
    db = tmp_path / "incidents.sqlite3"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(IncidentStore.open(db, readonly=True).find(generation_id="g")) < 2:
        time.sleep(0.05)
    store = IncidentStore.open(db, readonly=True)
    incidents = {i.probe: store.get(i.id) for i in store.find(generation_id="g")}
    read = reads or list(range(n, len(tokens)))
    want = _ans_scores(runtime, x)[read]
    incident = incidents["ans"]
    assert [p for p, _ in incident.token_scores] == read
    assert [s for _, s in incident.token_scores] == pytest.approx(want.tolist(), abs=ATOL)
    assert incident.score == pytest.approx(results["ans"].score, abs=ATOL)
    for pid in ANSWER_PROBES:
        info = incident.context[pid]
        assert info["answer_option"] == letter and [p for p, _ in info["token_scores"]] == read, pid
        assert info["n_tokens"] == len(read)
    assert [p for p, _ in incidents["ans-ml"].token_scores] == read


def test_ids_outside_the_table_read_as_no_text(start_sidecar, bundles, runtime):
    """Another model's ids (beyond the vocabulary) spell nothing: no option, the reply is read."""
    sidecar = start_sidecar(bundles)
    client = StreamClient(sidecar.address)
    tokens = [t + 10_000 for t in QUESTION] + [11, 16]
    n = len(QUESTION)
    x = _rows(len(tokens), seed=11)
    scores = _ans_scores(runtime, x)
    results = _stream(client, runtime, "g", x, tokens, n, pb.PAYLOAD_KIND_RESIDUAL_ROWS)
    assert results["ans"].score == pytest.approx(float(scores[n:].mean()), abs=ATOL)
    client.close()
