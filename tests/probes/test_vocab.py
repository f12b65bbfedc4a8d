"""The vocabulary table an `answer` bundle carries: round trip, integrity checks, and the bundle rule."""

from __future__ import annotations

import pytest
import torch

from probewatch.probes import load_bundle
from probewatch.probes.errors import CorruptBundleError
from probewatch.probes.synthetic import synthetic_manifest, synthetic_tensors, write_synthetic_bundle
from probewatch.probes.vocab import PIECE_BYTES, PIECE_OFFSETS, Vocabulary, check_vocab_tensors, vocab_tensors

PIECES = ["(A)", " yes", "", "<|im_end|>", " naïve", "\n", "\ufffd"]


def test_the_table_round_trips_every_piece():
    tensors = vocab_tensors(PIECES)
    check_vocab_tensors(tensors, "t")
    vocab = Vocabulary.from_tensors(tensors)
    assert vocab.pieces == PIECES and len(vocab) == len(PIECES)
    assert vocab.of([0, 4, 99, -1]) == ["(A)", " naïve", "", ""]  # ids outside the table spell nothing


@pytest.mark.parametrize(
    ("break_it", "message"),
    [
        (lambda t: t.pop(PIECE_BYTES), "weights lack tensor 'vocab_pieces'"),
        (lambda t: t.update({PIECE_OFFSETS: t[PIECE_OFFSETS].float()}), "must be 1-d torch.int64"),
        (lambda t: t.update({PIECE_OFFSETS: t[PIECE_OFFSETS].flip(0)}), "non-decreasing"),
        (lambda t: t.update({PIECE_BYTES: t[PIECE_BYTES][:-1]}), "holds"),
    ],
)
def test_a_broken_table_is_refused(break_it, message):
    tensors = vocab_tensors(PIECES)
    break_it(tensors)
    with pytest.raises(CorruptBundleError, match=message):
        check_vocab_tensors(tensors, "t")


def _answer_bundle(tmp_path, with_table: bool):
    manifest = synthetic_manifest("ans", d_model=8, layer=0, token_selection="answer")
    tensors = synthetic_tensors(8, torch.Generator().manual_seed(0))
    if with_table:
        tensors = {**tensors, **vocab_tensors(PIECES)}
    return write_synthetic_bundle(tmp_path, manifest, tensors=tensors)[0]


def test_an_answer_bundle_needs_its_table(tmp_path):
    path = _answer_bundle(tmp_path / "with", True)
    assert load_bundle(path).vocabulary.pieces == PIECES
    with pytest.raises(CorruptBundleError, match="token_selection 'answer' needs the vocabulary table"):
        _answer_bundle(tmp_path / "without", False)


def test_other_bundles_have_no_vocabulary(tmp_path):
    manifest = synthetic_manifest("plain", d_model=8, layer=0)
    path, _ = write_synthetic_bundle(tmp_path, manifest)
    assert load_bundle(path).vocabulary is None


def test_the_reference_tokenizer_table_matches_decoding_one_id(reference):
    from probewatch.probes.vocab import vocab_pieces

    tok = reference.tokenizer
    pieces = vocab_pieces(tok)
    assert len(pieces) == len(tok)
    ids = tok("Answer: (B) no", add_special_tokens=False)["input_ids"]
    assert "".join(pieces[i] for i in ids) == "Answer: (B) no"
    assert Vocabulary.from_tensors(vocab_tensors(pieces)).of(ids) == [pieces[i] for i in ids]
