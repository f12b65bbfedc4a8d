"""Token selection `answer` live: the tiny HF model answers a multiple-choice question through the attach
client into a real sidecar, by rows and by pushdown; the reply is forced ("(B) I think" in one sequence,
"I think yes" in the other, left-padded), and the probe's score equals offline scoring of the same tokens
(option B's prompt tokens for the first, the reply's own tokens for the second), linear and attention-pooling."""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.server.client.hf_attach import attach
from tests.server.answer_helpers import OPTION_B, QUESTION, expected_positions, write_answer_bundles
from tests.server.client.live_helpers import offline_token_scores

pytestmark = pytest.mark.compat

ATOL = 1e-4  # fp32, KV-cached decode vs one full forward
EOS = 2
REPLIES = [[11, 16, 17, EOS], [16, 17, 9, EOS]]  # "(B) I think", "I think yes"


class ForceReply(LogitsProcessor):
    """Greedy decoding that emits the given reply of each sequence (the tests must know the reply)."""

    def __init__(self, prompt_width: int, replies: list[list[int]]) -> None:
        self.prompt_width = prompt_width
        self.replies = replies

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        forced = torch.full_like(scores, float("-inf"))
        for b, reply in enumerate(self.replies):
            forced[b, reply[min(step, len(reply) - 1)]] = 0.0
        return forced


@pytest.fixture
def bundles(tmp_path, tiny_fp, tiny_bundles):
    return [*tiny_bundles, *write_answer_bundles(tmp_path / "ans", tiny_fp)]


@pytest.mark.parametrize("mode", ["rows", "pushdown"])
def test_answer_probes_live_equal_offline(mode, tiny_model, start_sidecar, bundles, tiny_fp):
    sidecar = start_sidecar(bundles)
    runtime = ProbeRuntime(load_bundles(bundles, expected_fingerprint=tiny_fp))
    prompts = [QUESTION, [21, 22, *QUESTION]]  # the first is left-padded by two
    width = max(map(len, prompts))
    ids = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, prompt in enumerate(prompts):
        ids[b, width - len(prompt) :] = torch.tensor(prompt)
        mask[b, width - len(prompt) :] = 1
    monitor = attach(tiny_model, sidecar=sidecar.address, mode=mode, wait_s=10)
    try:
        with torch.inference_mode():
            tiny_model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=6,
                do_sample=False,
                pad_token_id=0,
                eos_token_id=EOS,
                logits_processor=LogitsProcessorList([ForceReply(width, REPLIES)]),
            )
        results = [h.result(10) for h in monitor.last_generations]
    finally:
        monitor.detach()
    for b, (result, prompt, reply) in enumerate(zip(results, prompts, REPLIES)):
        tokens = prompt + reply[:-1]  # the EOS is never fed, so never scored
        assert result.status == "closed" and result.dropped_chunks == 0 and not result.errors
        reads = expected_positions(tokens, len(prompt))
        assert reads == (
            [p + len(prompt) - len(QUESTION) for p in OPTION_B]
            if b == 0
            else [len(prompt), len(prompt) + 1, len(prompt) + 2]
        )
        with torch.inference_mode():
            _, aggregates = offline_token_scores(tiny_model, runtime, tokens, len(prompt))
        for pid in ("ans", "ans-ml", "ans-att", "dec"):
            assert result.scores[pid] == pytest.approx(aggregates[pid], abs=ATOL), (b, pid)
            assert result.flagged[pid] == (aggregates[pid] >= runtime.bundle(pid).manifest.threshold.value)
