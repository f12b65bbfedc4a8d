"""An sae_feature probe fitted on the reference model end to end: fit, Platt, threshold, export,
load, and the live scoring path (ProbeRuntime.score_layers via score_dialogues) agree."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from probewatch.data.dialogue import Dialogue, Message
from probewatch.probes import ProbeRuntime, load_bundle
from probewatch.probes.saes import build_sae, get_sae_class, hook_names_for_layer, save_sae
from probewatch.training.datasets import BehaviourData

FACTS = [
    ("Paris", "France", "Spain"),
    ("Rome", "Italy", "Peru"),
    ("Berlin", "Germany", "Chile"),
    ("Madrid", "Spain", "Japan"),
    ("Lisbon", "Portugal", "Kenya"),
    ("Vienna", "Austria", "Brazil"),
    ("Oslo", "Norway", "Egypt"),
    ("Dublin", "Ireland", "India"),
    ("Athens", "Greece", "Canada"),
    ("Warsaw", "Poland", "Mexico"),
    ("Prague", "Czechia", "Cuba"),
    ("Helsinki", "Finland", "Ghana"),
    ("Budapest", "Hungary", "Nepal"),
    ("Stockholm", "Sweden", "Chad"),
    ("Bern", "Switzerland", "Fiji"),
    ("Sofia", "Bulgaria", "Laos"),
]


def toy_pool() -> BehaviourData:
    pool = []
    for i, (city, true, false) in enumerate(FACTS):
        kind = "capitals_a" if i % 2 else "capitals_b"
        for label, country in ((0, true), (1, false)):
            pool.append(
                Dialogue(
                    [
                        Message("user", f"Which country is {city} the capital of?"),
                        Message("assistant", f"{city} is the capital of {country}."),
                    ],
                    label,
                    f"g{i}",
                    kind,
                )
            )
    return BehaviourData("deception", pool, token_selection="response", aggregations=("mean", "max"))


def toy_control() -> list[Dialogue]:
    return [
        Dialogue(
            [
                Message("user", f"Give me a tip number {i} for cooking."),
                Message("assistant", "Taste the food as you cook and adjust the salt."),
            ],
            0,
            f"c{i}",
            "control",
        )
        for i in range(10)
    ]


@pytest.fixture(scope="module")
def reference_sae(reference, tmp_path_factory):
    arch_cls, cfg_cls = get_sae_class("topk")
    g = torch.Generator().manual_seed(0)
    d = reference.d_model
    w_dec = torch.randn(256, d, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    weights = {"W_enc": w_dec.T.contiguous() * 0.05, "b_enc": torch.zeros(256), "W_dec": w_dec, "b_dec": torch.zeros(d)}
    cfg = cfg_cls(
        d_in=d,
        d_sae=256,
        k=16,
        metadata={
            **hook_names_for_layer(9),
            "model_name": reference.model_id,
            "model_fingerprint": reference.fingerprint,
        },
    )
    path = tmp_path_factory.mktemp("saes") / "l9-topk-random"
    save_sae(build_sae(cfg, weights), path)
    return path


@pytest.mark.integration
@pytest.mark.parametrize("method", ["l1", "named"])
def test_fit_export_and_live_parity(reference, reference_sae, tmp_path, monkeypatch, method):
    from probewatch.training.sae.probe import fit_and_export_sae_probe

    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))  # activation caches stay in the test
    torch.set_num_threads(1)
    out = tmp_path / f"sae-deception-{method}"
    summary = fit_and_export_sae_probe(
        reference,
        reference_sae,
        "deception",
        method=method,
        n_features=4,
        max_features=32,
        out=out,
        data=toy_pool(),
        control=toy_control(),
        progress=False,
        parity_check=4,
    )
    assert summary["parity"]["max_abs_diff"] < 1e-2
    bundle = load_bundle(out, expected_fingerprint=reference.fingerprint, expected_d_model=reference.d_model)
    m = bundle.manifest
    assert m.kind == "sae_feature" and m.layer == 9 and m.extra["probe_type"] in ("l1_logistic", "named_features")
    assert m.threshold.method == "fpr" and m.extra["sae"]["name"] == "l9-topk-random"
    if method == "named":
        assert summary["n_latents"] <= 4
    assert json.loads((out / "report.json").read_text())["metrics"]["n_latents"] == summary["n_latents"]
    runtime = ProbeRuntime([bundle], d_model=reference.d_model)
    assert runtime.layers == [9]
    scores = runtime.score_layers({9: torch.randn(5, reference.d_model)})
    assert scores[m.id].shape == (5,)
    # the summary renders as a row of the SAE-vs-linear table in docs/quality.md
    from probewatch.training.quality_doc import RunInfo, render_sae_section

    run = RunInfo(reference.model_id, reference.fingerprint, reference.n_layers, reference.d_model, 0.0, "-", 2, "-")
    section = render_sae_section({}, {m.id: summary}, run)
    row = [line for line in section.splitlines() if line.startswith(f"| deception | `{m.id}`")][0]
    assert f"| {summary['n_latents']} latents |" in row and f"{summary['metrics']['auroc']:.3f}" in row


def choice_pool() -> BehaviourData:
    """Multiple-choice questions answered with a letter: label 1 when the named option is false. The letter
    alone carries nothing (both letters on both labels); the option it names does."""
    pool = []
    for i, (city, true, false) in enumerate(FACTS):
        kind = "choice_a" if i % 2 else "choice_b"
        options = (true, false) if i % 4 < 2 else (false, true)
        question = f"Which country is {city} the capital of?\n(A) {options[0]}\n(B) {options[1]}\nAnswer:"
        for label, country in ((0, true), (1, false)):
            letter = "AB"[options.index(country)]
            pool.append(
                Dialogue([Message("user", question), Message("assistant", f"({letter})")], label, f"g{i}", kind)
            )
    return BehaviourData("deception", pool, token_selection="response", aggregations=("mean", "max"))


@pytest.mark.integration
def test_an_answer_sae_probe_reads_the_named_option_as_the_runtime_does(
    reference, reference_sae, tmp_path, monkeypatch
):
    """Token selection `answer` for an SAE-feature probe: training pools the latents of the option the letter
    names, the bundle carries the vocabulary, and the live scoring path reads the same tokens (parity)."""
    from probewatch.probes.saes import load_sae
    from probewatch.probes.vocab import vocab_pieces
    from probewatch.training.sae.probe import SAEProbeError, activations_for, fit_and_export_sae_probe, latent_set

    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))
    torch.set_num_threads(1)
    data = choice_pool()
    out = tmp_path / "sae-choice"
    summary = fit_and_export_sae_probe(
        reference,
        reference_sae,
        "deception",
        method="named",
        n_features=4,
        token_selection="answer",
        out=out,
        data=data,
        control=toy_control(),
        progress=False,
        parity_check=6,
    )
    assert summary["parity"]["n"] == 6 and summary["parity"]["max_abs_diff"] < 1e-2
    bundle = load_bundle(out, expected_fingerprint=reference.fingerprint, expected_d_model=reference.d_model)
    assert bundle.manifest.token_selection == "answer" and bundle.manifest.kind == "sae_feature"
    assert bundle.vocabulary is not None and bundle.vocabulary.of([5])[0] == vocab_pieces(reference.tokenizer)[5]
    sae = load_sae(reference_sae)
    acts = activations_for(reference, data.pool, 9, "choice", progress=False)
    answer, reply = latent_set(sae, acts, "answer"), latent_set(sae, acts, "response")
    assert (acts.n_answer > 0).all() and (np.diff(answer.offsets) == acts.n_answer).all()  # every reply names one
    assert not np.array_equal(answer.pooled, reply.pooled)
    with pytest.raises(SAEProbeError, match="not 'all'"):
        latent_set(sae, acts, "all")  # prompt + response has no row sequence here: refused, not read as the reply
