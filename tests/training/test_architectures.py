"""The training pipeline on other architectures than llama: tiny random-init Qwen2 and Gemma3 models
train, export, load and score end to end (offline through `score_dialogues`, token by token through
the runtime and a streaming aggregator, as the sidecar does), so users with these models are not the
first to try it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probewatch.capture import run_forward
from probewatch.data.chat import encode_dialogue
from probewatch.data.dialogue import write_dialogues
from probewatch.probes import ProbeRuntime, load_bundle, make_aggregator
from probewatch.probes.selection import selection_mask
from probewatch.scoring import score_dialogues
from probewatch.training.pipeline import TrainConfig, train
from tests.training.helpers import control_dialogues, save_tiny_model, synthetic_dialogues


@pytest.mark.parametrize("layout", ["qwen2", "gemma3"])
def test_train_export_load_and_score_end_to_end(layout, tmp_path):
    from transformers import PreTrainedTokenizerFast

    from probewatch.models import load_model

    folder = save_tiny_model(tmp_path / layout, seed=3, layout=layout)
    loaded = load_model(str(folder))
    # AutoTokenizer maps model_type qwen2 to the Qwen2 BPE class, which cannot read the test's word-level
    # vocabulary (a real Qwen2 folder ships its own BPE); read the tokenizer.json as it is instead
    loaded.tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    assert loaded.n_layers == 4 and loaded.d_model == 64
    data, control = tmp_path / "data.jsonl", tmp_path / "control.jsonl"
    dialogues = synthetic_dialogues(n_groups=24, seed=7)
    write_dialogues(data, dialogues)
    write_dialogues(control, control_dialogues())
    result = train(
        TrainConfig(
            behaviour="deception",
            data_files=[data],
            control_file=control,
            layers=[1, 2],
            token_selections=["response", "all"],
            out=tmp_path / "bundle",
            progress=False,
            plots=False,
        ),
        loaded=loaded,
    )
    report = result.report
    assert report.model.fingerprint == loaded.fingerprint
    # a random-init model only carries the token identities forward, Gemma3 (normed, scaled embeddings) less
    # cleanly than Qwen2; the synthetic labels are still well above chance on validation and held-out kinds
    assert report.chosen["val_auroc"] > 0.8 and report.metrics.auroc_heldout_kind > 0.7
    assert report.metrics.auroc > 0.6
    assert {r["token_selection"] for r in report.sweep} == {"response", "all"}
    assert report.parity is not None and report.parity.max_abs_diff < 1e-3  # offline path == cached training scores

    bundle = load_bundle(result.bundle_path, expected_fingerprint=loaded.fingerprint, expected_d_model=64)
    runtime = ProbeRuntime([bundle])
    test = [dialogues[i] for i in range(0, len(dialogues), 5)]
    offline = score_dialogues(loaded.model, loaded.tokenizer, runtime, test, progress=False)
    for d, scored in zip(test, offline):
        # the live rule: per-token scores of the captured layer, the bundle's token selection, a streaming aggregator
        enc = encode_dialogue(loaded.tokenizer, d)
        rows = run_forward(loaded.model, [bundle.layer], torch.tensor([enc.input_ids]))[bundle.layer][0]
        tokens = runtime.score_layers({bundle.layer: rows})[bundle.id].numpy()
        mask = selection_mask(
            bundle.manifest.token_selection, np.arange(len(enc.input_ids)), enc.prompt_last + 1, np.array(enc.scored)
        )
        agg = make_aggregator(bundle.manifest.aggregation)
        for chunk in np.array_split(tokens[mask], 3):
            agg.update(chunk)
        assert agg.value == pytest.approx(scored.aggregate[bundle.id], abs=1e-4)
    pos = [r.aggregate[bundle.id] for r, d in zip(offline, test) if d.label == 1]
    neg = [r.aggregate[bundle.id] for r, d in zip(offline, test) if d.label == 0]
    assert np.mean(pos) > np.mean(neg)
