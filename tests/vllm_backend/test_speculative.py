"""Speculative decoding (n-gram drafts, the V1 runner): every verify step schedules the last token plus
up to 3 drafts; the plugin holds the drafts' rows until the rejection sampler decides and scores
only accepted ones. Live scores equal the HF capture of the final sequence at every generated
position (no rejected draft's row, no gap, no duplicate), drafts were both accepted and rejected,
and the self-check saw nothing wrong. The engine runs in its own process (the plugin loads once per
process)."""

from __future__ import annotations

import pytest
import torch

from probewatch.capture import run_forward
from probewatch.probes import ProbeRuntime, load_bundles
from tests.vllm_backend.conftest import REPO, score_tolerance
from tests.vllm_backend.test_server import _engine_script


def test_only_accepted_drafts_are_scored(tmp_path, hf_reference):
    r = _engine_script("speculative", tmp_path, PROBEWATCH_WAIT_S="30")
    assert r["status"] == ["closed", "closed"] and r["errors"] == [[], []]
    assert r["capture_errors"] == 0
    assert r["accepted"] > 0 and r["rejected"] > 0, (r["accepted"], r["rejected"])  # both paths exercised
    root = REPO / "probes" / "shipped" / "smollm2-135m-instruct"
    runtime = ProbeRuntime(load_bundles(sorted(p for p in root.iterdir() if (p / "manifest.json").is_file())))
    layers = next(b.manifest.layers or [b.manifest.layer] for b in runtime.bundles if b.id == "deception")
    eos = hf_reference.tokenizer.eos_token_id
    for prompt, tokens, scores in zip(r["prompts"], r["tokens"], r["scores"]):
        P = len(prompt)
        # response tokens (EOS is not scored, like offline); the last one has a row only if it was fed,
        # which under speculation happens when it was an accepted draft
        n = tokens.index(eos) if eos in tokens else len(tokens)
        got = {int(p): s for p, s in scores["deception"] if p >= P}
        m = len(got)
        assert sorted(got) == list(range(P, P + m)) and n - 1 <= m <= n, (m, n)
        with torch.inference_mode():
            hidden = run_forward(hf_reference.model, layers, torch.tensor([prompt + tokens[:m]]))
        want = runtime.score_layers({layer: hidden[layer][0] for layer in layers})["deception"]  # summed over layers
        tol = score_tolerance(want[: P + m])
        for p in range(P, P + m):
            assert got[p] == pytest.approx(float(want[p]), abs=tol), p


def test_a_drafter_that_owns_the_aux_outputs_is_refused_by_name(tmp_path):
    """`extract_hidden_states` (like EAGLE-3) reads the model's auxiliary outputs itself: the plugin
    leaves the engine alone, says why on one line and in the engaged gauge, generation unaffected."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = {
        "method": "extract_hidden_states",
        "num_speculative_tokens": 1,
        "draft_model_config": {"hf_config": {"eagle_aux_hidden_state_layer_ids": [4, 10]}},
    }
    r = _engine_script(
        "refused",
        tmp_path,
        PROBEWATCH_SIDECAR=f"127.0.0.1:{port}",
        PROBEWATCH_WAIT_S="1",
        PROBEWATCH_LAYERS="15",
        TEST_SPECULATIVE_CONFIG=json.dumps(spec),
    )
    assert all(n == 6 for n in r["n_tokens"])
    assert not r["runner_capture"] and r["engaged"] == {"speculative_decoding": 0.0}
    assert "monitoring OFF on vllm-v1 (speculative_decoding): speculative decoding (extract_hidden_states)" in r["log"]
    assert r["aux_layers"] == [4, 10]  # the drafter's own layers, untouched
