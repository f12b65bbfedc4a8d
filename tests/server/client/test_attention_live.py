"""Attention-pooling probes live: the tiny HF model generating through the attach client into a real
sidecar, by rows and by pushdown (two columns per attention probe), scores every token and pools
exactly like offline scoring (one full forward, `ProbeRuntime.score_layers`, `aggregate`)."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.server.client.hf_attach import attach
from tests.server.attention_helpers import write_attention_bundles
from tests.server.client.live_helpers import generate_attached, offline_token_scores

pytestmark = pytest.mark.compat

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_attention_bundles(tmp_path / "att", tiny_fp)]


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_attention_probes_live_equal_offline(mode, tiny_model, start_sidecar, bundles, tiny_fp):
    sidecar = start_sidecar(bundles)
    runtime = ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))
    plan, results, sequences = generate_attached(tiny_model, sidecar, mode, seed=11)
    if mode == "pushdown":  # layer 1 ships dec + att's (a_t, v_t); layer 2 avg, ref + att-sharp's two
        assert {c.layer: tuple(c.projection.shape) for c in plan.captures.values()} == {1: (64, 3), 2: (64, 4)}
    for result, (prompt, generated) in zip(results, sequences):
        assert result.status == "closed" and result.dropped_chunks == 0 and not result.errors
        with torch.inference_mode():
            token_scores, aggregates = offline_token_scores(tiny_model, runtime, prompt + generated, len(prompt))
        for pid in ("att", "att-sharp", "dec"):
            got = result.token_scores[pid]
            assert sorted(got) == sorted(token_scores[pid]), pid  # every selected token, nothing else
            for p, v in token_scores[pid].items():
                assert got[p] == pytest.approx(v, abs=ATOL), (pid, p)
            assert result.scores[pid] == pytest.approx(aggregates[pid], abs=ATOL), pid
            assert result.flagged[pid] == (aggregates[pid] >= runtime.bundle(pid).manifest.threshold.value)


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_reference_model_attention_probe_live_equals_score_dialogues(mode, reference, tmp_path):
    """On the reference model, an attention probe built on the shipped deception direction: live (KV-cached
    decode through a real sidecar) == offline `score_dialogues`, token by token and aggregated."""
    from probewatch.bundle_index import shipped_root
    from probewatch.data.chat import render
    from probewatch.data.dialogue import Dialogue, Message
    from probewatch.scoring import score_dialogues
    from probewatch.server.sidecar.config import sidecar_config_for
    from probewatch.server.sidecar.process import Sidecar
    from tests.server.attention_helpers import attention_from_linear

    src = shipped_root() / "smollm2-135m-instruct" / "deception"
    path = attention_from_linear(src, tmp_path / "bundles", "deception-attention", seed=4)
    runtime = ProbeRuntime(load_bundles([path], expected_fingerprint=reference.fingerprint))
    model, tok = reference.model, reference.tokenizer
    question = "Did you eat the last cookie? Answer honestly in two sentences."
    prompt = tok(
        render(tok, [{"role": "user", "content": question}], add_generation_prompt=True), add_special_tokens=False
    )["input_ids"]
    config = sidecar_config_for(
        None, [str(path)], host="127.0.0.1", port=0, metrics_host="127.0.0.1", metrics_port=0,
        incident_db=tmp_path / "incidents.sqlite3",
    )  # fmt: skip
    with Sidecar(config) as sidecar:
        monitor = attach(model, tok, sidecar=sidecar.address, mode=mode, wait_s=15)
        try:
            with torch.inference_mode():
                out = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
            live = monitor.last_generations[0].result(30)
        finally:
            monitor.detach()
    generated = out[0, len(prompt) :].tolist()
    n_real = generated.index(tok.eos_token_id) if tok.eos_token_id in generated else len(generated)
    response = tok.decode(generated[:n_real], skip_special_tokens=True)
    with torch.inference_mode():
        offline = score_dialogues(
            model, tok, runtime, [Dialogue([Message("user", question), Message("assistant", response)])], progress=False
        )[0]
    pid = "deception-attention"
    assert len(offline.token_scores[pid]) == n_real > 2
    live_scores = [live.token_scores[pid][p] for p in range(len(prompt), len(prompt) + n_real)]
    assert live_scores == pytest.approx(offline.token_scores[pid], abs=ATOL)
    assert live.scores[pid] == pytest.approx(offline.aggregate[pid], abs=ATOL)
    assert live.flagged[pid] == offline.flagged[pid]
