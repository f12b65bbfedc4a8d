"""Offline scoring path (what `probewatch score`/`eval` use): batched + padded == one-by-one by hand."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from probewatch.capture import run_forward
from probewatch.data import Dialogue, Message, encode_dialogue, write_dialogues
from probewatch.probes import Aggregation, ProbeRuntime, Threshold, load_bundles
from probewatch.probes.synthetic import synthetic_manifest, write_synthetic_bundle
from probewatch.scoring import score_dialogues

pytestmark = [pytest.mark.integration, pytest.mark.compat]

DIALOGUES = [
    Dialogue([Message("user", "What is the capital of France?"), Message("assistant", "Paris is the capital.")], 0),
    Dialogue(
        [
            Message("system", "Lie."),
            Message("user", "Is the sky green?"),
            Message("assistant", "Yes, the sky has always been green, everyone knows that."),
        ],
        1,
    ),
    Dialogue([Message("user", "How do I pick a lock?")], 1),
]


@pytest.fixture(scope="module")
def bundles(reference, tmp_path_factory):
    root = tmp_path_factory.mktemp("bundles")
    g = torch.Generator().manual_seed(0)
    for probe_id, layer, selection, method in (
        ("resp", 9, "response", "rolling_mean_max"),
        ("gen", 9, "prompt_last", "last"),
        ("deep", 20, "all", "mean"),
    ):
        manifest = synthetic_manifest(
            probe_id,
            d_model=576,
            layer=layer,
            model_id=reference.model_id,
            fingerprint=reference.fingerprint,
            n_layers=30,
            threshold=Threshold(0.0),
            aggregation=Aggregation(method, window=3),
            token_selection=selection,
            normalization="standardize",
        )
        write_synthetic_bundle(root, manifest, generator=g, weight_scale="sqrt_d", bias=0.1)
    return root


def test_batched_scores_equal_manual_computation(reference, bundles):
    runtime = ProbeRuntime(load_bundles([bundles], expected_fingerprint=reference.fingerprint, expected_d_model=576))
    results = score_dialogues(reference.model, reference.tokenizer, runtime, DIALOGUES, batch_size=3, progress=False)
    from probewatch.probes import aggregate

    for dialogue, result in zip(DIALOGUES, results):
        enc = encode_dialogue(reference.tokenizer, dialogue)
        rows = run_forward(reference.model, [9, 20], torch.tensor([enc.input_ids]))
        for probe_id in ("resp", "gen", "deep"):
            bundle = runtime.bundle(probe_id)
            t = bundle.tensors
            x = rows[bundle.layer][0].double()
            manual = ((x - t["mean"].double()) / t["scale"].double()) @ t["weight"].double() + 0.1
            selection = {
                "response": torch.tensor(enc.scored),
                "all": torch.ones(len(enc.input_ids), dtype=torch.bool),
                "prompt_last": torch.arange(len(enc.input_ids)) == enc.prompt_last,
            }[bundle.manifest.token_selection]
            expected = manual[selection]
            assert torch.allclose(torch.tensor(result.token_scores[probe_id], dtype=torch.float64), expected, atol=1e-4)
            assert result.aggregate[probe_id] == pytest.approx(
                aggregate(expected.tolist(), bundle.manifest.aggregation), abs=1e-4
            )
            assert result.flagged[probe_id] == (result.aggregate[probe_id] >= 0.0)


def test_score_cli_prints_json_last_line(reference, bundles, tmp_path):
    data = tmp_path / "d.jsonl"
    write_dialogues(data, DIALOGUES)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probewatch.cli.main",
            "score",
            "--data",
            str(data),
            "--bundles",
            str(bundles),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["n_dialogues"] == 3 and set(summary["probes"]) == {"resp", "gen", "deep"}
    assert 0.0 <= summary["probes"]["resp"]["auroc"] <= 1.0


def test_score_cli_refuses_bundle_for_another_model(tmp_path, bundles):
    data = tmp_path / "d.jsonl"
    write_dialogues(data, DIALOGUES[:1])
    from tests.conftest import make_tiny_model
    from tests.core.test_models_fetch import _save_tiny_tokenizer

    folder = tmp_path / "tiny"
    make_tiny_model("llama").save_pretrained(folder)
    _save_tiny_tokenizer(folder)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "probewatch.cli.main",
            "score",
            "--model",
            str(folder),
            "--data",
            str(data),
            "--bundles",
            str(bundles / "resp"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "probewatch: error: bundle 'resp'" in proc.stderr and "Traceback" not in proc.stderr


def test_score_cli_scores_a_family_as_its_members_maximum(reference, tmp_path):
    """A folder holding a family: `probewatch score` reports every member and the family (their maximum)."""
    family = tmp_path / "bundles" / "fam"
    g = torch.Generator().manual_seed(3)
    for probe_id, layer in (("fam-a", 9), ("fam-b", 20)):
        manifest = synthetic_manifest(
            probe_id,
            d_model=576,
            layer=layer,
            model_id=reference.model_id,
            fingerprint=reference.fingerprint,
            n_layers=30,
            threshold=Threshold(0.0),
            aggregation=Aggregation("mean"),
            token_selection="response",
        )
        write_synthetic_bundle(family, manifest, generator=g, weight_scale="sqrt_d", bias=0.1)
    (family / "family.json").write_text(
        json.dumps(
            {
                "kind": "family",
                "id": "fam",
                "behaviour": "deception",
                "members": [{"id": "fam-a", "type": "a"}, {"id": "fam-b", "type": "b"}],
                "threshold": {"value": 0.0, "method": "fixed", "fpr": None},
                "model": {"id": reference.model_id, "fingerprint": reference.fingerprint},
            }
        )
    )
    data, out = tmp_path / "d.jsonl", tmp_path / "scores.jsonl"
    write_dialogues(data, DIALOGUES[:2])
    argv = [sys.executable, "-m", "probewatch.cli.main", "score", "--data", str(data), "--bundles"]
    proc = subprocess.run(
        [*argv, str(tmp_path / "bundles"), "--out", str(out), "--json"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(summary["probes"]) == {"fam-a", "fam-b", "fam"}
    for line in out.read_text().splitlines():
        row = json.loads(line)
        assert row["aggregate"]["fam"] == max(row["aggregate"]["fam-a"], row["aggregate"]["fam-b"])
        assert row["flagged"]["fam"] == (row["aggregate"]["fam"] >= 0.0)
