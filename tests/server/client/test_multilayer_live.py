"""Multi-layer probes live: the tiny HF model generating through the attach client into a real sidecar,
by rows and by pushdown (each layer ships the probe's partial dot product; the sidecar adds the bias and
sums per token), scores every token exactly like offline scoring (one full forward over every layer the
probe reads, `ProbeRuntime.score_layers`, `aggregate`)."""

from __future__ import annotations

import pytest
import torch

from probewatch.capture import run_forward
from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.probes.selection import selection_mask
from probewatch.server.client.hf_attach import attach
from tests.server.multilayer_helpers import write_multilayer_bundles

pytestmark = pytest.mark.compat

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward
STOP = {0, 2}


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_multilayer_bundles(tmp_path / "ml", tiny_fp)]


def _offline(model, runtime: ProbeRuntime, tokens: list[int], n_prompt: int) -> tuple[dict, dict]:
    """Per probe: {position: token score} over the probe's selection, and the aggregate."""
    hidden = run_forward(model, runtime.layers, torch.tensor([tokens]))
    positions = torch.arange(len(tokens)).numpy()
    token_scores, aggregates = {}, {}
    for pid, scores in runtime.score_layers({layer: h[0] for layer, h in hidden.items()}).items():
        manifest = runtime.bundle(pid).manifest
        mask = selection_mask(manifest.token_selection, positions, n_prompt)
        picked = scores.numpy()[mask]
        aggregates[pid] = aggregate(picked, manifest.aggregation)
        token_scores[pid] = dict(zip(positions[mask].tolist(), picked.tolist()))
    return token_scores, aggregates


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_multi_layer_probes_live_equal_offline(mode, tiny_model, start_sidecar, bundles, tiny_fp):
    sidecar = start_sidecar(bundles)
    runtime = ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))
    g = torch.Generator().manual_seed(12)
    ids = torch.randint(3, 256, (2, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: sequence 1 has a 4-token prompt
    ids[1, :2] = 0
    monitor = attach(tiny_model, sidecar=sidecar.address, mode=mode, wait_s=10)
    try:
        with torch.inference_mode():
            out = tiny_model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0
            )
        plan, _ = monitor._current_plan()
        results = [h.result(10) for h in monitor.last_generations]
    finally:
        monitor.detach()
    assert sorted(plan.captures) == [0, 1, 2, 3]  # the capture plan asks for every layer any probe reads
    assert {p["id"]: p["layers"] for p in plan.probes}["ml"] == [1, 3]
    if mode == "pushdown":  # one partial column per layer of each multi-layer probe
        assert {c.layer: tuple(c.projection.shape) for c in plan.captures.values()} == {
            0: (64, 1), 1: (64, 2), 2: (64, 3), 3: (64, 1)
        }  # fmt: skip
    for b, result in enumerate(results):
        assert result.status == "closed" and result.dropped_chunks == 0 and not result.errors
        prompt = ids[b][mask[b].bool()].tolist()
        generated = []
        for t in out[b, ids.shape[1] :].tolist():
            if t in STOP:
                break
            generated.append(t)
        with torch.inference_mode():
            token_scores, aggregates = _offline(tiny_model, runtime, prompt + generated, len(prompt))
        for pid in ("ml", "ml-all", "dec"):
            got = result.token_scores[pid]
            assert sorted(got) == sorted(token_scores[pid]), pid  # every selected token, nothing else
            for p, v in token_scores[pid].items():
                assert got[p] == pytest.approx(v, abs=ATOL), (pid, p)
            assert result.scores[pid] == pytest.approx(aggregates[pid], abs=ATOL), pid
            assert result.flagged[pid] == (aggregates[pid] >= runtime.bundle(pid).manifest.threshold.value)
        assert result.flagged["ml-all"]  # threshold -5: raised live from joined tokens
