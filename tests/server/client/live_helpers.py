"""Live-vs-offline helpers for the attach-client tests: a left-padded greedy batch generated through the
attach client into a real sidecar, and the offline scores of the same tokens from one full forward."""

from __future__ import annotations

from typing import Any

import torch

from probewatch.capture import run_forward
from probewatch.probes import ProbeRuntime, aggregate
from probewatch.probes.aggregate import token_values
from probewatch.probes.selection import selection_mask
from probewatch.server.client.hf_attach import attach

STOP = {0, 2}  # the tiny model's pad / eos ids: generation ends at the first


def generate_attached(model, sidecar, mode: str, seed: int, batch: int = 2) -> tuple[Any, list, list]:
    """(the client's plan, each generation's live result, (prompt ids, generated ids) per sequence) of a
    greedy batch of 6-token prompts, sequence 1 left-padded to 4 tokens, 8 new tokens."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 256, (batch, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0  # left padding: sequence 1 has a 4-token prompt
    ids[1, :2] = 0
    monitor = attach(model, sidecar=sidecar.address, mode=mode, wait_s=10)
    try:
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
        plan, _ = monitor._current_plan()
        results = [h.result(10) for h in monitor.last_generations]
    finally:
        monitor.detach()
    sequences = []
    for b in range(batch):
        generated = []
        for t in out[b, ids.shape[1] :].tolist():
            if t in STOP:
                break
            generated.append(t)
        sequences.append((ids[b][mask[b].bool()].tolist(), generated))
    return plan, results, sequences


def offline_token_scores(model, runtime: ProbeRuntime, tokens: list[int], n_prompt: int) -> tuple[dict, dict]:
    """Per probe: {position: token score} over the probe's selection (v_t for an attention probe; the
    layers summed for a multi-layer one), and the aggregate."""
    hidden = run_forward(model, runtime.layers, torch.tensor([tokens]))
    positions = torch.arange(len(tokens)).numpy()
    token_scores, aggregates = {}, {}
    for pid, scores in runtime.score_layers({layer: h[0] for layer, h in hidden.items()}).items():
        bundle = runtime.bundle(pid)
        manifest = bundle.manifest
        pieces = None if bundle.vocabulary is None else bundle.vocabulary.of(tokens)  # token selection `answer`
        mask = selection_mask(manifest.token_selection, positions, n_prompt, pieces=pieces)
        picked = scores.numpy()[mask]
        aggregates[pid] = aggregate(picked, manifest.aggregation)
        token_scores[pid] = dict(zip(positions[mask].tolist(), token_values(picked).tolist()))
    return token_scores, aggregates
