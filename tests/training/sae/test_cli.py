"""`probewatch sae list|info|features` on a small SAE folder (no model needed)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probewatch.cli.main import main
from probewatch.probes.saes import save_sae
from probewatch.training.sae.activations import ActivationStore
from probewatch.training.sae.corpus import TextSequence
from probewatch.training.sae.interpret import behaviour_association, interpret_features, write_features_json
from tests.training.sae.test_interpret import CharTokenizer, relu_sae


@pytest.fixture()
def sae_home(tmp_path, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path))
    folder = tmp_path / "saes" / "tiny-model" / "l1-relu-6"
    sae = relu_sae()
    save_sae(sae, folder)
    seqs = [TextSequence([1, 2, 3, 4, 5, 6, 7, 8], "chat", "a")]
    acts = torch.randn(7, 4)
    store = ActivationStore(
        acts,
        torch.zeros(7, dtype=torch.long),
        torch.arange(1, 8),
        torch.arange(2, 9),
        torch.zeros(7, dtype=torch.bool),
        1,
        "fp",
        seqs,
    )
    features = interpret_features(sae, store, CharTokenizer(), n_examples=2, before=3, after=1, progress=False)
    pooled = np.abs(np.random.default_rng(0).normal(size=(20, 6)))
    labels = np.array([1] * 10 + [0] * 10)
    pooled[:10, 2] += 2
    behaviours = {
        "deception": {
            "dataset": "toy",
            "pooling": "mean over response tokens",
            "n_pos": 10,
            "n_neg": 10,
            "top": behaviour_association(sae, pooled, labels, top=4),
        }
    }
    write_features_json(folder, sae, features, behaviours, {"rows": 7}, 3, 1)
    return folder


def _json_out(capsys) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_list_and_info(sae_home, capsys):
    assert main(["sae", "list", "--json"]) == 0
    rows = _json_out(capsys)
    assert [r["name"] for r in rows if r["source"] == "user"] == ["l1-relu-6"]
    assert main(["sae", "info", str(sae_home), "--json"]) == 0
    info = _json_out(capsys)
    assert info["architecture"] == "standard" and info["layer"] == 1 and info["d_sae"] == 6


def test_features_by_behaviour_json_and_rich(sae_home, capsys):
    assert main(["sae", "features", "--sae", str(sae_home), "--behaviour", "deception", "--top", "2", "--json"]) == 0
    doc = _json_out(capsys)
    section = doc["sections"][0]
    assert section["behaviour"] == "deception" and section["latents"][0]["id"] == 2
    assert {"auroc", "description", "examples", "density"} <= set(section["latents"][0])
    assert main(["sae", "features", "--sae", "l1-relu-6", "--model", "tiny-model", "--behaviour", "deception"]) == 0
    text = capsys.readouterr().out
    assert "deception" in text and "AUROC" in text


def test_features_errors(sae_home, capsys):
    assert main(["sae", "features", "--sae", str(sae_home), "--behaviour", "refusal"]) == 2
    assert "no association table for 'refusal'" in capsys.readouterr().err
    assert main(["sae", "features", "--sae", "nope", "--model", "tiny-model"]) == 2
    assert "no SAE folder or SAE named 'nope'" in capsys.readouterr().err
