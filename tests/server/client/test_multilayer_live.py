"""Multi-layer probes live: the tiny HF model generating through the attach client into a real sidecar,
by rows and by pushdown (each layer ships the probe's partial dot product; the sidecar adds the bias and
sums per token), scores every token exactly like offline scoring (one full forward over every layer the
probe reads, `ProbeRuntime.score_layers`, `aggregate`)."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes import ProbeRuntime, load_bundles
from tests.server.client.live_helpers import generate_attached, offline_token_scores
from tests.server.multilayer_helpers import write_multilayer_bundles

pytestmark = pytest.mark.compat

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_multilayer_bundles(tmp_path / "ml", tiny_fp)]


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_multi_layer_probes_live_equal_offline(mode, tiny_model, start_sidecar, bundles, tiny_fp):
    sidecar = start_sidecar(bundles)
    runtime = ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))
    plan, results, sequences = generate_attached(tiny_model, sidecar, mode, seed=12)
    assert sorted(plan.captures) == [0, 1, 2, 3]  # the capture plan asks for every layer any probe reads
    assert {p["id"]: p["layers"] for p in plan.probes}["ml"] == [1, 3]
    if mode == "pushdown":  # one partial column per layer of each multi-layer probe
        assert {c.layer: tuple(c.projection.shape) for c in plan.captures.values()} == {
            0: (64, 1), 1: (64, 2), 2: (64, 3), 3: (64, 1)
        }  # fmt: skip
    for result, (prompt, generated) in zip(results, sequences):
        assert result.status == "closed" and result.dropped_chunks == 0 and not result.errors
        with torch.inference_mode():
            token_scores, aggregates = offline_token_scores(tiny_model, runtime, prompt + generated, len(prompt))
        for pid in ("ml", "ml-all", "dec"):
            got = result.token_scores[pid]
            assert sorted(got) == sorted(token_scores[pid]), pid  # every selected token, nothing else
            for p, v in token_scores[pid].items():
                assert got[p] == pytest.approx(v, abs=ATOL), (pid, p)
            assert result.scores[pid] == pytest.approx(aggregates[pid], abs=ATOL), pid
            assert result.flagged[pid] == (aggregates[pid] >= runtime.bundle(pid).manifest.threshold.value)
        assert result.flagged["ml-all"]  # threshold -5: raised live from joined tokens
