"""Interpretation: running top-k equals brute force, AUROC per latent matches the scalar metric,
features.json holds contexts with highlights and behaviour tables."""

from __future__ import annotations

import json

import numpy as np
import torch

from probewatch.metrics import auroc
from probewatch.probes.saes import build_sae, get_sae_class, hook_names_for_layer, load_feature_descriptions
from probewatch.training.sae.activations import ActivationStore
from probewatch.training.sae.corpus import TextSequence
from probewatch.training.sae.interpret import (
    auroc_columns,
    behaviour_association,
    interpret_features,
    pooled_latents,
    top_rows,
    write_features_json,
)


class CharTokenizer:
    def decode(self, ids):
        return "".join(chr(96 + i) for i in ids)


def relu_sae(d=4, d_sae=6, seed=0):
    _, cfg_cls = get_sae_class("standard")
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d, d_sae, generator=g),
        "b_enc": torch.zeros(d_sae),
        "W_dec": torch.randn(d_sae, d, generator=g),
        "b_dec": torch.zeros(d),
    }
    return build_sae(cfg_cls(d_in=d, d_sae=d_sae, metadata=hook_names_for_layer(1)), w)


def test_top_rows_equals_brute_force():
    sae = relu_sae()
    acts = torch.randn(1000, 4)
    values, rows, fired, total = top_rows(sae, acts, n=5, batch_size=97)
    z = sae.encode(acts)
    v, r = z.topk(5, dim=0)
    assert torch.allclose(values, v) and torch.equal(fired, (z > 0).sum(0))
    assert torch.allclose(z.gather(0, rows), v)
    assert torch.allclose(total.float(), z.sum(0), rtol=1e-4)


def test_auroc_columns_matches_scalar_auroc():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 5))
    x[:, 2] = np.round(x[:, 2])  # ties
    y = (rng.random(80) < 0.4).astype(int)
    cols = auroc_columns(x, y)
    assert np.allclose(cols, [auroc(x[:, j], y) for j in range(5)])


def test_pooled_latents_are_means_over_each_examples_rows():
    sae = relu_sae()
    rows = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    offsets = np.array([0, 3, 3, 10])
    pooled = pooled_latents(sae, rows, offsets, batch_size=4)
    z = sae.encode(torch.from_numpy(rows)).numpy()
    assert np.allclose(pooled[0], z[:3].mean(0), atol=1e-5) and np.allclose(pooled[1], 0)
    assert np.allclose(pooled[2], z[3:].mean(0), atol=1e-5)


def test_features_json_has_contexts_highlights_and_behaviours(tmp_path):
    sae = relu_sae()
    seqs = [TextSequence([1, 2, 3, 4, 5, 6], "chat", "a"), TextSequence([1, 2, 3, 7, 8], "statements", "b")]
    # rows for every position but 0; positions 1-2 of sequence 1 are a repeated prefix (dedup)
    pairs = [(0, p) for p in range(1, 6)] + [(1, 3), (1, 4)]
    acts = torch.randn(len(pairs), 4)
    store = ActivationStore(
        acts,
        torch.tensor([s for s, _ in pairs]),
        torch.tensor([p for _, p in pairs]),
        torch.tensor([seqs[s].ids[p] for s, p in pairs]),
        torch.zeros(len(pairs), dtype=torch.bool),
        1,
        "fp",
        seqs,
    )
    features = interpret_features(
        sae, store, CharTokenizer(), n_examples=2, n_top_tokens=3, before=3, after=1, progress=False
    )
    z = sae.encode(acts)
    for f in features:
        j = f["id"]
        assert abs(f["density"] - float((z[:, j] > 0).float().mean())) < 1e-6
        for ex in f["examples"]:
            assert ex["acts"][ex["at"]] is not None and abs(ex["acts"][ex["at"]] - ex["act"]) < 0.02
            assert len(ex["tokens"]) == len(ex["acts"])
            if ex["source"] == "statements":  # window reaches the deduplicated prefix: its rows are found again
                assert all(a is not None for a in ex["acts"][1:])
    pooled = np.abs(np.random.default_rng(0).normal(size=(30, 6)))
    labels = np.array([1] * 15 + [0] * 15)
    pooled[:15, 4] += 3
    table = behaviour_association(sae, pooled, labels, top=3)
    assert table[0]["id"] == 4 and table[0]["auroc"] > 0.9
    path = write_features_json(
        tmp_path,
        sae,
        features,
        {"deception": {"dataset": "x", "pooling": "mean", "n_pos": 15, "n_neg": 15, "top": table}},
        {"rows": 7},
        3,
        1,
    )
    doc = json.loads(path.read_text())
    assert doc["format"] == "probewatch-sae-features/1" and len(doc["features"]) == 6
    assert "deception+" in doc["features"][4]["description"] or doc["features"][4]["density"] == 0
    assert load_feature_descriptions(tmp_path)[4] == doc["features"][4]["description"]
