"""Corpus bookkeeping and the activation cache: skipped rows, exact rows, resumable shards."""

from __future__ import annotations

import json

import pytest
import torch

from probewatch.capture import run_forward
from probewatch.training.sae.activations import INDEX_FILE, extract_activations, keep_masks, load_activations
from probewatch.training.sae.corpus import PrefixDedup, TextSequence, _split_of, load_corpus


def test_prefix_dedup_skips_position_0_and_repeated_prefixes():
    d = PrefixDedup()
    assert d.keep([1, 2, 3, 4]) == [False, True, True, True]
    assert d.keep([1, 2, 3, 9]) == [False, False, False, True]  # shared prefix [1,2,3] already seen
    assert d.keep([5, 2, 3]) == [False, True, True]  # same tokens, other prefix: new rows


def test_split_is_by_group_and_deterministic():
    splits = [_split_of(f"g{i}", 0.2, 0) for i in range(2000)]
    assert 0.15 < splits.count("eval") / 2000 < 0.25
    assert splits == [_split_of(f"g{i}", 0.2, 0) for i in range(2000)]


def test_extracted_rows_equal_the_capture_contract(tmp_path, tiny_llama):
    seqs = [
        TextSequence([1, 5, 6, 7, 8], "t", "a"),
        TextSequence([1, 5, 6, 9], "t", "b", "eval"),
        TextSequence([2, 3, 4, 5, 6, 7, 8, 9, 10], "t", "c"),
    ]
    extract_activations(
        tiny_llama, 2, seqs, tmp_path, "pwfp1:x", {"note": "test"}, batch_tokens=12, shard_rows=4, progress=False
    )
    index = json.loads((tmp_path / INDEX_FILE).read_text())
    assert len(index["shards"]) >= 2 and index["rows"] == sum(map(sum, keep_masks(seqs))) == 4 + 1 + 8
    store = load_activations(tmp_path, expected_fingerprint="pwfp1:x", expected_layer=2)
    for row in range(store.acts.shape[0]):
        s, p = int(store.seq[row]), int(store.pos[row])
        ids = torch.tensor([seqs[s].ids])
        expected = run_forward(tiny_llama, [2], ids)[2][0, p]
        assert torch.allclose(store.acts[row], expected, atol=2e-3 * (1 + expected.abs().max()))
        assert int(store.tok[row]) == seqs[s].ids[p]
    assert store.split("eval").tolist() == (store.seq == 1).nonzero().squeeze(1).tolist()
    assert load_corpus(tmp_path / "corpus.jsonl")[1] == {"note": "test"}


def test_extraction_resumes_from_finished_shards(tmp_path, tiny_llama, monkeypatch):
    seqs = [TextSequence(list(range(1, 12)), "t", "a"), TextSequence(list(range(20, 31)), "t", "b")]
    extract_activations(tiny_llama, 1, seqs, tmp_path, "fp", {}, batch_tokens=11, shard_rows=5, progress=False)
    first = load_activations(tmp_path).acts.clone()
    (tmp_path / INDEX_FILE).unlink()
    calls = []
    import probewatch.capture as capture

    original = capture.run_forward
    monkeypatch.setattr(capture, "run_forward", lambda *a, **k: (calls.append(1), original(*a, **k))[1])
    extract_activations(tiny_llama, 1, seqs, tmp_path, "fp", {}, batch_tokens=11, shard_rows=5, progress=False)
    assert calls == [] and torch.equal(load_activations(tmp_path).acts, first)


def test_massive_activation_rows_are_dropped_on_load(tmp_path, tiny_llama):
    from safetensors.torch import load_file, save_file

    seqs = [TextSequence(list(range(1, 30)), "t", "a")]
    extract_activations(tiny_llama, 1, seqs, tmp_path, "fp", {}, progress=False)
    shard = tmp_path / "shard-00000.safetensors"
    tensors = load_file(str(shard))
    tensors["acts"][3] *= 1000  # one attention-sink-like row
    save_file(tensors, str(shard))
    store = load_activations(tmp_path)
    assert store.n_dropped == 1 and store.acts.shape[0] == 27 and 4 not in store.pos.tolist()
    assert load_activations(tmp_path, outlier_factor=None).acts.shape[0] == 28


@pytest.mark.integration
def test_build_corpus_from_the_shared_datasets(reference, shared_data):
    """Every source contributes, budgets count distinct rows, generated text extends its prompt."""
    from probewatch.training.sae.corpus import CorpusConfig, build_corpus, corpus_stats

    torch.set_num_threads(1)
    config = CorpusConfig(
        statement_tokens=600,
        chat_tokens=800,
        alignment_faking_tokens=200,
        generate_prompts=4,
        generate_new_tokens=4,
        eval_fraction=0.3,
    )
    seqs = build_corpus(reference.tokenizer, shared_data, config, model=reference.model, progress=False)
    stats = corpus_stats(seqs)
    assert set(stats) == {"statements", "chat", "alignment_faking", "generated"}
    assert all(len(s.ids) <= config.context_size for s in seqs if s.source == "statements")
    assert stats["generated"]["sequences"] == 4
    kept = sum(map(sum, keep_masks([s for s in seqs if s.source in ("statements", "chat")])))
    assert kept < stats["statements"]["tokens"] + stats["chat"]["tokens"]  # the shared system prompt is kept once
    assert {s.split for s in seqs} == {"train", "eval"}
    groups_by_split = {}
    for s in seqs:
        groups_by_split.setdefault(s.group, set()).add(s.split)
    assert all(len(v) == 1 for v in groups_by_split.values())
