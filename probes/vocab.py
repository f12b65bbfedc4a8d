"""The vocabulary's token pieces, carried inside a bundle whose token selection needs token text.

Token selection `answer` decides from the text of the tokens which ones a probe reads (the option a
multiple-choice letter names: `probes/answer_option.py`). The sidecar gets token *ids* from its
clients and has no tokenizer, and must decide exactly as training did; so the bundle carries the
table `piece[id]` (each id decoded alone, as training decoded it) in its weights file, where the
manifest's sha256 covers it like any weight. Two tensors: the pieces' UTF-8 bytes joined
(`vocab_pieces`, uint8) and their end offsets (`vocab_offsets`, int64 [vocab]).

An id outside the table (a client sending another model's ids) reads as an empty piece: it can start
no option and no answer, so the probe reads the reply, never another token's text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from probewatch.probes.errors import CorruptBundleError

__all__ = [
    "NEEDS_VOCABULARY",
    "PIECE_BYTES",
    "PIECE_OFFSETS",
    "Vocabulary",
    "check_vocab_tensors",
    "vocab_pieces",
    "vocab_tensors",
    "vocabulary_for",
]

PIECE_BYTES = "vocab_pieces"
PIECE_OFFSETS = "vocab_offsets"
#: token selections whose bundle carries the table: the sidecar decides from token text which tokens they read
NEEDS_VOCABULARY = ("answer",)


def vocab_pieces(tokenizer: Any) -> list[str]:
    """Every id of the tokenizer decoded alone (special tokens kept, spaces as the tokenizer writes them)."""
    ids = [[i] for i in range(len(tokenizer))]
    return list(tokenizer.batch_decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False))


def vocab_tensors(pieces: Sequence[str]) -> dict[str, torch.Tensor]:
    """The two tensors a bundle stores the table as."""
    encoded = [p.encode("utf-8", "surrogatepass") for p in pieces]
    ends = np.cumsum([len(b) for b in encoded], dtype=np.int64)
    data = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    return {PIECE_BYTES: torch.from_numpy(data), PIECE_OFFSETS: torch.from_numpy(ends)}


def vocabulary_for(token_selection: str, tokenizer: Any, where: str) -> dict[str, torch.Tensor]:
    """The tensors a bundle reading `token_selection` must carry: the table where it needs one, else none. One rule
    for every exporter (linear, SAE-feature); the loader checks the same set (`NEEDS_VOCABULARY`)."""
    if token_selection not in NEEDS_VOCABULARY:
        return {}
    if tokenizer is None:
        raise ValueError(
            f"{where}: token selection {token_selection!r} needs the tokenizer to write the vocabulary table"
        )
    return vocab_tensors(vocab_pieces(tokenizer))


def check_vocab_tensors(tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """CorruptBundleError unless the two tensors are present and consistent (dtype, shape, monotone ends)."""
    for name, dtype in ((PIECE_BYTES, torch.uint8), (PIECE_OFFSETS, torch.int64)):
        if name not in tensors:
            raise CorruptBundleError(
                f"{where}: token_selection 'answer' needs the vocabulary table, but the weights lack tensor {name!r} "
                "(export the bundle with the tokenizer: probewatch.probes.vocab.vocab_tensors)"
            )
        if tensors[name].dtype != dtype or tensors[name].dim() != 1:
            raise CorruptBundleError(f"{where}: tensor {name!r} must be 1-d {dtype}, got {tensors[name].dtype}")
    ends = tensors[PIECE_OFFSETS]
    if ends.numel() == 0 or (ends[1:] < ends[:-1]).any() or int(ends[0]) < 0:
        raise CorruptBundleError(
            f"{where}: tensor {PIECE_OFFSETS!r} must be non-empty, non-negative and non-decreasing"
        )
    if int(ends[-1]) != tensors[PIECE_BYTES].numel():
        raise CorruptBundleError(
            f"{where}: {PIECE_OFFSETS!r} ends at {int(ends[-1])} but {PIECE_BYTES!r} holds {tensors[PIECE_BYTES].numel()} bytes"
        )


class Vocabulary:
    """Token id -> piece (a tokenizer's `vocab_pieces`, or a bundle's table: `from_tensors`); ids outside it
    (negative ones included) read as ''."""

    def __init__(self, pieces: Sequence[str]) -> None:
        self.pieces: list[str] = list(pieces)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, torch.Tensor]) -> Vocabulary:
        """The table a bundle stores (`vocab_tensors`), decoded once."""
        data = tensors[PIECE_BYTES].numpy().tobytes()
        ends = tensors[PIECE_OFFSETS].numpy()
        starts = np.concatenate([[0], ends[:-1]])
        return cls([data[a:z].decode("utf-8", "surrogatepass") for a, z in zip(starts.tolist(), ends.tolist())])

    def __len__(self) -> int:
        return len(self.pieces)

    def piece(self, token_id: int) -> str:
        return self.pieces[token_id] if 0 <= token_id < len(self.pieces) else ""

    def of(self, token_ids: Sequence[int] | np.ndarray) -> list[str]:
        """The pieces of a sequence of ids."""
        return [self.piece(int(t)) for t in token_ids]
