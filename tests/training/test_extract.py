"""Activation extraction: exact shard round trip, metadata, resumability, cache keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import probewatch.training.extract as extract_mod
from probewatch.capture import run_forward
from probewatch.data.chat import encode_dialogue
from probewatch.scoring import truncate_encoded
from probewatch.training.extract import (
    ActivationCacheError,
    ActivationSet,
    cache_key,
    extract_activations,
    segment_mean,
)
from tests.training.helpers import synthetic_dialogues


def _extract(loaded, dialogues, tmp_path, **kw):
    kw.setdefault("layers", [1, 3])
    return extract_activations(
        loaded.model,
        loaded.tokenizer,
        dialogues,
        fingerprint=loaded.fingerprint,
        cache_root=tmp_path / "acts",
        progress=False,
        **kw,
    )


def _expected_rows(loaded, dialogue, layer, max_tokens=1024):
    enc = truncate_encoded(encode_dialogue(loaded.tokenizer, dialogue), max_tokens)
    rows = run_forward(loaded.model, [layer], torch.tensor([enc.input_ids]))[layer][0]
    return rows[torch.tensor(enc.scored)], rows[enc.prompt_last]


def test_shards_round_trip_exactly(tiny_loaded, tmp_path):
    dialogues = synthetic_dialogues(n_groups=9)
    acts = _extract(tiny_loaded, dialogues, tmp_path, batch_size=1, shard_examples=5)
    assert len(acts.index["shards"]) == 4
    for layer in (1, 3):
        rows, offsets = acts.token_rows(layer)
        last = acts.last_rows(layer)
        for i, d in enumerate(dialogues):
            exp_rows, exp_last = _expected_rows(tiny_loaded, d, layer)
            assert torch.equal(torch.from_numpy(rows[offsets[i] : offsets[i + 1]]), exp_rows)
            assert torch.equal(torch.from_numpy(last[i]), exp_last)
    reopened = ActivationSet.open(acts.root)
    assert np.array_equal(reopened.token_rows(3)[0], acts.token_rows(3)[0])


def test_rest_sums_cover_every_token_outside_the_scored_region(tiny_loaded, tmp_path):
    """`rest.{L}` (prompt + closing tokens) + the scored rows = every token, as `all` scoring reads them."""
    dialogues = synthetic_dialogues(n_groups=5, seed=2)
    acts = _extract(tiny_loaded, dialogues, tmp_path, batch_size=4)
    sums, counts = acts.rest_sums(3)
    for i, d in enumerate(dialogues):
        enc = truncate_encoded(encode_dialogue(tiny_loaded.tokenizer, d), 1024)
        rows = run_forward(tiny_loaded.model, [3], torch.tensor([enc.input_ids]))[3][0]
        outside = ~torch.tensor(enc.scored)
        assert counts[i] == int(outside.sum())
        assert np.allclose(sums[i], rows[outside].sum(0).numpy(), atol=1e-4)


def test_same_dialogues_under_another_name_reuse_the_cache(tiny_loaded, tmp_path):
    dialogues = synthetic_dialogues(n_groups=4, seed=5)
    first = _extract(tiny_loaded, dialogues, tmp_path, name="pool-kind")
    again = _extract(tiny_loaded, dialogues, tmp_path, name="other-behaviour-ood-kind")
    assert again.root == first.root and again.index["key"] == first.index["key"]


def test_padded_batches_match_unpadded_rows(tiny_loaded, tmp_path):
    dialogues = synthetic_dialogues(n_groups=6, seed=4)
    acts = _extract(tiny_loaded, dialogues, tmp_path, batch_size=8)
    rows, offsets = acts.token_rows(1)
    for i, d in enumerate(dialogues):
        exp_rows, _ = _expected_rows(tiny_loaded, d, 1)
        assert np.allclose(rows[offsets[i] : offsets[i + 1]], exp_rows.numpy(), atol=1e-5)


def test_metadata_and_per_example_views(tiny_loaded, tmp_path):
    dialogues = synthetic_dialogues(n_groups=6, seed=2)
    acts = _extract(tiny_loaded, dialogues, tmp_path)
    assert acts.labels.tolist() == [d.label for d in dialogues]
    assert acts.groups.tolist() == [d.group for d in dialogues]
    assert acts.kinds.tolist() == [d.kind for d in dialogues]
    n_scored = [encode_dialogue(tiny_loaded.tokenizer, d).n_scored for d in dialogues]
    assert acts.n_tokens.tolist() == n_scored
    rows, offsets = acts.token_rows(3)
    assert offsets[-1] == len(rows) == sum(n_scored)
    means = segment_mean(rows, offsets)  # what features.py pools per example
    for i in range(len(dialogues)):
        assert np.allclose(means[i], rows[offsets[i] : offsets[i + 1]].mean(0), atol=1e-6)
    assert acts.fingerprint == tiny_loaded.fingerprint and acts.layers == [1, 3] and acts.d_model == 64


def test_rerun_reuses_the_cache_and_resumes_missing_shards(tiny_loaded, tmp_path, monkeypatch):
    dialogues = synthetic_dialogues(n_groups=8, seed=5)
    first = _extract(tiny_loaded, dialogues, tmp_path, shard_examples=4)
    reference = first.token_rows(1)[0].copy()
    calls = []
    original = extract_mod.run_forward

    def counting(model, layers, ids, attn=None, row_mask=None):
        calls.append(ids.shape[0])
        return original(model, layers, ids, attn, row_mask)

    monkeypatch.setattr(extract_mod, "run_forward", counting)
    again = _extract(tiny_loaded, dialogues, tmp_path, shard_examples=4)
    assert calls == [] and again.root == first.root  # complete cache: no forward at all
    (first.root / "index.json").unlink()
    (first.root / first.index["shards"][1]["file"]).unlink()  # an interrupted run
    resumed = _extract(tiny_loaded, dialogues, tmp_path, shard_examples=4)
    assert sum(calls) == len(first.index["shards"][1]["examples"])
    assert np.array_equal(resumed.token_rows(1)[0], reference)


def test_cache_is_keyed_by_fingerprint_data_and_layers(tiny_loaded, other_tiny_folder, tmp_path):
    from probewatch.models import load_model

    dialogues = synthetic_dialogues(n_groups=4)
    a = _extract(tiny_loaded, dialogues, tmp_path)
    other = load_model(str(other_tiny_folder))
    b = extract_activations(
        other.model, other.tokenizer, dialogues, [1, 3], other.fingerprint, cache_root=tmp_path / "acts", progress=False
    )
    assert a.root != b.root and a.fingerprint != b.fingerprint
    with pytest.raises(ActivationCacheError, match="extracted from model"):
        a.check_fingerprint(other.fingerprint)
    key = lambda ds, layers: cache_key(tiny_loaded.fingerprint, tiny_loaded.tokenizer, ds, layers, 1024, "float32")
    assert key(dialogues, [1, 3]) != key(dialogues[:-1], [1, 3]) != key(dialogues, [1])
    with pytest.MonkeyPatch.context() as mp:  # another multiple-choice rule chose other option rows: another cache
        import probewatch.probes.answer_option as rule

        before = key(dialogues, [1, 3])
        mp.setattr(rule, "RULE_VERSION", rule.RULE_VERSION + 1)
        assert key(dialogues, [1, 3]) != before
    with pytest.raises(ActivationCacheError, match="layer 2 not extracted"):
        a.token_rows(2)


def test_truncation_matches_the_scoring_path_and_float16_storage(tiny_loaded, tmp_path):
    dialogues = synthetic_dialogues(n_groups=3, seed=7)
    acts = _extract(tiny_loaded, dialogues, tmp_path, layers=[2], max_tokens=6, dtype="float16")
    rows, offsets = acts.token_rows(2)
    assert rows.dtype == np.float32  # stored as float16, read back as float32
    for i, d in enumerate(dialogues):
        exp_rows, _ = _expected_rows(tiny_loaded, d, 2, max_tokens=6)
        assert np.allclose(rows[offsets[i] : offsets[i + 1]], exp_rows.half().float().numpy(), atol=1e-3)


def test_open_refuses_an_incomplete_cache(tmp_path):
    with pytest.raises(ActivationCacheError, match="extraction incomplete"):
        ActivationSet.open(tmp_path)
