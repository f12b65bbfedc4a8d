"""Token selection `answer` in training: extraction stores the option rows a multiple-choice reply names,
`LayerData.reading("answer")` reads them in place of the letter, the sweep offers `answer` where the pool
has such replies and keeps it where it separates better (the attention probe too reads it), and the exported bundle (which carries the
vocabulary) scores live through the attach client and a real sidecar exactly as offline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probewatch.capture import run_forward
from probewatch.data.chat import encode_dialogue, render
from probewatch.data.dialogue import write_dialogues
from probewatch.probes import ProbeRuntime, aggregate, load_bundles
from probewatch.probes.selection import selection_mask
from probewatch.probes.vocab import vocab_pieces
from probewatch.scoring import truncate_encoded
from probewatch.training.extract import extract_activations
from probewatch.training.features import LayerData, score_all
from probewatch.training.stage_data import names_an_option
from tests.training.helpers import choice_dialogues, control_dialogues, save_tiny_model, synthetic_dialogues

ATOL = 1e-4


@pytest.fixture(scope="module")
def chars_loaded(tmp_path_factory):
    from probewatch.models import load_model

    return load_model(str(save_tiny_model(tmp_path_factory.mktemp("tiny-chars"), seed=0, tokenizer="chars")))


def _answer_positions(loaded, dialogue) -> tuple[list[int], list[int]]:
    """(positions `answer` reads, positions of the reply) of one written dialogue, by the offline rule."""
    enc = truncate_encoded(encode_dialogue(loaded.tokenizer, dialogue), 1024)
    pieces = vocab_pieces(loaded.tokenizer)
    positions = np.arange(len(enc.input_ids))
    reply = np.asarray(enc.scored)
    mask = selection_mask(
        "answer", positions, enc.prompt_last + 1, response=reply, pieces=[pieces[t] for t in enc.input_ids]
    )
    return positions[mask].tolist(), positions[reply].tolist()


def test_extraction_keeps_the_option_rows_a_letter_names(chars_loaded, tmp_path):
    dialogues = choice_dialogues(n_groups=6)
    acts = extract_activations(
        chars_loaded.model,
        chars_loaded.tokenizer,
        dialogues,
        [1, 3],
        chars_loaded.fingerprint,
        cache_root=tmp_path / "acts",
        batch_size=3,
        shard_examples=7,
        progress=False,
    )
    data = LayerData.load(acts, 3)
    view = data.reading("answer")
    for i, d in enumerate(dialogues):
        reads, reply = _answer_positions(chars_loaded, d)
        if d.kind == "cf":
            assert acts.n_answer[i] == 0 and reads == reply  # a free reply: `answer` reads it, as `response`
        else:
            assert reads and max(reads) < min(reply) and acts.n_answer[i] == len(reads)  # the option, in the prompt
        enc = truncate_encoded(encode_dialogue(chars_loaded.tokenizer, d), 1024)
        rows = run_forward(chars_loaded.model, [3], torch.tensor([enc.input_ids]))[3][0].numpy()
        np.testing.assert_allclose(view.rows[view.offsets[i] : view.offsets[i + 1]], rows[reads], atol=1e-5)
        np.testing.assert_allclose(data.rows[data.offsets[i] : data.offsets[i + 1]], rows[reply], atol=1e-5)
    # a subset keeps each example's option rows with it
    idx = np.array([5, 0, 3])
    sub = data.subset(idx).reading("answer")
    for j, i in enumerate(idx):
        np.testing.assert_array_equal(
            sub.rows[sub.offsets[j] : sub.offsets[j + 1]], view.rows[view.offsets[i] : view.offsets[i + 1]]
        )
    # scoring reads the same rows: a probe's mean over them
    w = np.random.default_rng(0).standard_normal(data.rows.shape[1])
    from probewatch.probes.manifest import Aggregation

    got = score_all(w, 0.2, data, "answer", [Aggregation("mean")])["mean"]
    want = [float((view.rows[view.offsets[i] : view.offsets[i + 1]] @ w).mean() + 0.2) for i in range(len(dialogues))]
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_the_sweep_offers_answer_only_where_a_reply_names_an_option():
    assert names_an_option(choice_dialogues(n_groups=3))
    assert not names_an_option(synthetic_dialogues(n_groups=3))


@pytest.fixture(scope="module")
def answer_bundle(chars_loaded, tmp_path_factory):
    from probewatch.training.pipeline import TrainConfig, train

    root = tmp_path_factory.mktemp("answer-bundle")
    data, control = root / "data.jsonl", root / "control.jsonl"
    write_dialogues(data, choice_dialogues(n_groups=24))
    write_dialogues(
        control, [d for d in choice_dialogues(n_groups=9, seed=5) if d.label == 0][:24] + control_dialogues(8)
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROBEWATCH_HOME", str(root / "home"))
        result = train(
            TrainConfig(
                behaviour="deception",
                data_files=[data],
                control_file=control,
                layers=[1, 3],
                token_selections=["response", "answer"],
                aggregations=["mean"],
                methods=["logistic", "attention"],
                per_token=False,
                probe_id="choice",
                out=root / "choice",
                progress=False,
                plots=False,
            ),
            loaded=chars_loaded,
        )
    return result


def test_training_keeps_answer_where_the_letter_hides_the_label(answer_bundle):
    report = answer_bundle.report
    assert report.chosen["token_selection"] == "answer"
    assert report.parity is not None and report.parity.max_abs_diff < 1e-4  # offline scoring of the bundle
    best = {}
    for row in report.sweep:
        for kind in ("ca", "cb"):
            auroc = (row.get("heldout_per_kind") or {}).get(kind)
            if auroc is not None:
                best[(row["token_selection"], kind)] = max(best.get((row["token_selection"], kind), 0.0), auroc)
    for kind in ("ca", "cb"):  # the letter alone is chance by construction; the option it names is not
        assert best[("answer", kind)] > 0.9 > best[("response", kind)] + 0.2, best


def test_the_attention_probe_is_tried_on_each_reading(answer_bundle):
    """The sweep fits the attention probe on the best layer of each row-reading selection; pooling over the
    option a letter names separates the held-out kinds as the linear `answer` probe does."""
    rows = {r["token_selection"]: r for r in answer_bundle.report.sweep if r["method"] == "attention"}
    assert sorted(rows) == ["answer", "response"]
    for kind in ("ca", "cb"):
        assert rows["answer"]["heldout_per_kind"][kind] > 0.9 > rows["response"]["heldout_per_kind"][kind] + 0.2


def test_an_answer_bundle_scores_live_as_offline(chars_loaded, answer_bundle, tmp_path):
    from transformers import LogitsProcessor, LogitsProcessorList

    from probewatch.server.client.hf_attach import attach
    from probewatch.server.sidecar.config import SidecarConfig
    from probewatch.server.sidecar.process import Sidecar

    (bundle,) = load_bundles([answer_bundle.bundle_path], expected_fingerprint=chars_loaded.fingerprint)
    assert bundle.manifest.token_selection == "answer" and bundle.vocabulary is not None
    runtime = ProbeRuntime([bundle])
    model, tok = chars_loaded.model, chars_loaded.tokenizer
    text = render(
        tok, [{"role": "user", "content": "Q7: which?\n(A) abc def\n(B) pqr stu\nAnswer:"}], add_generation_prompt=True
    )
    prompt = tok(text, add_special_tokens=False)["input_ids"]
    reply = tok("(B)\n", add_special_tokens=False)["input_ids"]

    class Force(LogitsProcessor):
        def __call__(self, input_ids, scores):
            step = min(input_ids.shape[1] - len(prompt), len(reply) - 1)
            forced = torch.full_like(scores, float("-inf"))
            forced[:, reply[step]] = 0.0
            return forced

    config = SidecarConfig(
        model_id="tiny-chars",
        fingerprint=chars_loaded.fingerprint,
        bundle_paths=[answer_bundle.bundle_path],
        host="127.0.0.1",
        port=0,
        metrics_host="127.0.0.1",
        metrics_port=0,
        incident_db=tmp_path / "incidents.sqlite3",
    )
    sidecar = Sidecar(config).start()
    try:
        monitor = attach(model, sidecar=sidecar.address, mode="rows", wait_s=10)
        try:
            with torch.inference_mode():
                model.generate(
                    input_ids=torch.tensor([prompt]),
                    max_new_tokens=len(reply),
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                    logits_processor=LogitsProcessorList([Force()]),
                )
            live = monitor.last_generations[0].result(10)
        finally:
            monitor.detach()
    finally:
        sidecar.stop(0)
    assert live.monitored and live.status == "closed", live
    tokens = prompt + reply[:-1]  # the last token of a max_new_tokens stop is never fed: "(B)" is
    positions = np.arange(len(tokens))
    mask = selection_mask("answer", positions, len(prompt), pieces=bundle.vocabulary.of(tokens))
    assert positions[mask].max() < len(prompt) and tok.decode([tokens[p] for p in positions[mask]]).strip() == "pqr stu"
    hidden = run_forward(model, runtime.layers, torch.tensor([tokens]))
    scores = runtime.score_layers({layer: h[0] for layer, h in hidden.items()})["choice"].numpy()
    expected = aggregate(scores[mask], bundle.manifest.aggregation)
    assert live.scores["choice"] == pytest.approx(expected, abs=ATOL)
