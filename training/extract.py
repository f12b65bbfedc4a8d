"""Activation extraction: dialogues -> scored-region residuals of chosen layers, written as cache shards.

Fitting many probes on many layers must never redo forward passes, so extraction runs once per
(model fingerprint, tokenizer, data, layers, truncation, dtype) into the shard cache described in
`training/activation_cache.py` (layout, key and read side; its names are re-exported here).

Rows are gathered exactly as `probewatch.scoring.score_dialogues` selects them (same encoding,
same truncation, right padding, `run_forward` which stops after the last wanted layer), so a
probe trained here scores the same numbers offline and live. Shards are written atomically and
skipped on rerun (resumable).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from probewatch.capture import run_forward
from probewatch.data.chat import EncodedDialogue, encode_dialogue, pad_batch
from probewatch.data.dialogue import Dialogue
from probewatch.jsonio import write_json_atomic
from probewatch.probes.selection import selection_mask
from probewatch.probes.vocab import Vocabulary, vocab_pieces
from probewatch.scoring import truncate_encoded
from probewatch.training.activation_cache import (
    CACHE_FORMAT,
    INDEX_FILE,
    PLAN_FILE,
    ActivationCacheError,
    ActivationSet,
    ActivationUnion,
    cache_dir_for,
    cache_key,
    data_hash,
    expand_ranges,
    find_by_key,
    segment_mean,
    shard_name,
    tokenizer_digest,
)

__all__ = [
    "CACHE_FORMAT",
    "INDEX_FILE",
    "PLAN_FILE",
    "ActivationCacheError",
    "ActivationSet",
    "ActivationUnion",
    "answer_masks",
    "cache_dir_for",
    "cache_key",
    "contiguous_by_kind",
    "data_hash",
    "expand_ranges",
    "extract_activations",
    "extract_by_kind",
    "find_by_key",
    "segment_mean",
    "tokenizer_digest",
]


# -- write side ----------------------------------------------------------------------------------
def _plan_shards(
    lengths: Sequence[int],
    n_rows: Sequence[int],
    n_layers: int,
    d: int,
    bytes_per: int,
    shard_examples: int,
    shard_bytes: int,
) -> tuple[list[int], list[list[int]]]:
    """Length-sorted order (less padding) cut into shards bounded by examples and bytes."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    shards: list[list[int]] = [[]]
    size = 0
    for i in order:
        cost = (n_rows[i] + 1) * n_layers * d * bytes_per
        if shards[-1] and (len(shards[-1]) >= shard_examples or size + cost > shard_bytes):
            shards.append([])
            size = 0
        shards[-1].append(i)
        size += cost
    return order, [s for s in shards if s]


def _batches(indices: Sequence[int], lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> list[list[int]]:
    """Consecutive (length-sorted) indices grouped so that batch * max_len stays bounded."""
    out: list[list[int]] = []
    current: list[int] = []
    width = 0
    for i in indices:
        new_width = max(width, lengths[i])
        if current and (len(current) >= batch_size or new_width * (len(current) + 1) > max_batch_tokens):
            out.append(current)
            current, new_width = [], lengths[i]
        current.append(i)
        width = new_width
    if current:
        out.append(current)
    return out


def extract_activations(
    model: torch.nn.Module,
    tokenizer: Any,
    dialogues: Sequence[Dialogue],
    layers: Sequence[int],
    fingerprint: str,
    name: str = "data",
    cache_root: str | Path | None = None,
    max_tokens: int | None = 1024,
    batch_size: int = 16,
    max_batch_tokens: int = 8192,
    shard_examples: int = 512,
    shard_bytes: int = 256 << 20,
    dtype: str = "float32",
    progress: bool = True,
) -> ActivationSet:
    """Extract (or reuse) the scored-region residuals of `layers` for every dialogue."""
    from tqdm.auto import tqdm

    from probewatch.capture import find_decoder_layers, hidden_size

    if not dialogues:
        raise ActivationCacheError("nothing to extract: no dialogues")
    layers = _normalise_layers(layers, len(find_decoder_layers(model)))
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    key = cache_key(fingerprint, tokenizer, dialogues, layers, max_tokens, dtype)
    root = cache_dir_for(fingerprint, name, key, Path(cache_root) if cache_root else None)
    if (root / INDEX_FILE).is_file():
        return ActivationSet.open(root)
    same = find_by_key(root.parent, key)  # the same dialogues extracted under another name (e.g. as an OOD set)
    if same is not None:
        return same
    root.mkdir(parents=True, exist_ok=True)

    encoded = _encode_all(tokenizer, dialogues, max_tokens, name)
    answers = answer_masks(Vocabulary(vocab_pieces(tokenizer)), encoded)
    lengths = [len(e.input_ids) for e in encoded]
    n_rows = [e.n_scored for e in encoded]
    n_answer = [0 if a is None else int(a.sum()) for a in answers]
    d_model = hidden_size(model)
    _, shards = _plan_shards(
        lengths, n_rows, len(layers), d_model, torch.finfo(torch_dtype).bits // 8, shard_examples, shard_bytes
    )
    _write_plan(root, key, shards)

    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    done = [k for k in range(len(shards)) if (root / shard_name(k)).is_file()]
    bar = tqdm(
        total=len(dialogues),
        initial=sum(len(shards[k]) for k in done),
        desc=f"extract {name}",
        unit="dlg",
        disable=not progress,
    )
    for k, members in enumerate(shards):
        if k in done:
            continue
        batches = [
            [(encoded[i], answers[i]) for i in batch]
            for batch in _batches(members, lengths, batch_size, max_batch_tokens)
        ]
        tensors = {
            "examples": torch.tensor(members, dtype=torch.int64),
            "n_tokens": torch.tensor([n_rows[i] for i in members], dtype=torch.int64),
            "n_answer": torch.tensor([n_answer[i] for i in members], dtype=torch.int64),
            **_shard_tensors(model, layers, batches, pad_id, torch_dtype, d_model, bar.update),
        }
        _write_shard(root / shard_name(k), tensors, key)
    bar.close()

    index = {
        "format": CACHE_FORMAT,
        "key": key,
        "name": name,
        "fingerprint": fingerprint,
        "layers": layers,
        "d_model": d_model,
        "dtype": dtype,
        "max_tokens": max_tokens,
        "n_examples": len(dialogues),
        "data_hash": data_hash(dialogues),
        "tokenizer": tokenizer_digest(tokenizer),
        "labels": [d.label for d in dialogues],
        "groups": [d.group for d in dialogues],
        "kinds": [d.kind for d in dialogues],
        "n_tokens": n_rows,
        "n_rest": [lengths[i] - n_rows[i] for i in range(len(lengths))],
        "n_answer": n_answer,
        "seq_len": lengths,
        "shards": [{"file": shard_name(k), "examples": members} for k, members in enumerate(shards)],
    }
    write_json_atomic(root / INDEX_FILE, index)
    return ActivationSet(root, index)


def _normalise_layers(layers: Sequence[int], n_model_layers: int) -> list[int]:
    """Sorted, de-duplicated layer indices; negative ones count from the end."""
    out: set[int] = set()
    for layer in layers:
        if not -n_model_layers <= int(layer) < n_model_layers:
            _bad(layer, n_model_layers)
        out.add(int(layer) % n_model_layers)
    return sorted(out)


def _encode_all(
    tokenizer: Any, dialogues: Sequence[Dialogue], max_tokens: int | None, name: str
) -> list[EncodedDialogue]:
    """Every dialogue encoded as `score_dialogues` encodes it (same truncation)."""
    encoded: list[EncodedDialogue] = []
    for i, d in enumerate(dialogues):
        try:
            encoded.append(truncate_encoded(encode_dialogue(tokenizer, d), max_tokens))
        except ValueError as exc:
            raise ActivationCacheError(f"{name}: dialogue {i} (group {d.group}): {exc}") from exc
    return encoded


def _write_plan(root: Path, key: str, shards: list[list[int]]) -> None:
    """plan.json first: a resumed run must cut the same shards (and belong to the same extraction)."""
    plan_path = root / PLAN_FILE
    if plan_path.is_file() and json.loads(plan_path.read_text()).get("key") != key:
        raise ActivationCacheError(f"{plan_path}: belongs to another extraction; delete {root}")
    write_json_atomic(plan_path, {"key": key, "shards": shards})


def answer_masks(vocab: Vocabulary, encoded: Sequence[EncodedDialogue]) -> list[np.ndarray | None]:
    """Per example, the positions token selection `answer` reads where they differ from the reply (the
    option a multiple-choice reply names: `probes/selection.py`), else None; `vocab`: the tokenizer's."""
    out: list[np.ndarray | None] = []
    for enc in encoded:
        reply = np.asarray(enc.scored, dtype=bool)
        positions = np.arange(len(reply))
        pieces = vocab.of(enc.input_ids)
        mask = selection_mask("answer", positions, enc.prompt_last + 1, response=reply, pieces=pieces)
        out.append(None if np.array_equal(mask, reply) else mask)
    return out


def _shard_tensors(
    model: torch.nn.Module,
    layers: list[int],
    batches: list[list[tuple[EncodedDialogue, np.ndarray | None]]],
    pad_id: int,
    torch_dtype: torch.dtype,
    d_model: int,
    advance: Callable[[int], Any],
) -> dict[str, torch.Tensor]:
    """Forward the shard's batches; per layer its scored-region rows, prompt_last rows, rest sums and the
    option rows of the examples whose reply names one (`answer_masks`)."""
    device = next(model.parameters()).device
    tokens: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    rest: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    answer: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for batch in batches:
        chunk = [enc for enc, _ in batch]
        ids, attn, scored = pad_batch(chunk, pad_id, side="right")
        rows = run_forward(model, layers, ids.to(device), attn.to(device))
        for layer, hidden in rows.items():
            hidden = hidden.to("cpu")
            for b, (enc, option) in enumerate(batch):
                n = len(enc.input_ids)
                tokens[layer].append(hidden[b][scored[b]].to(torch_dtype))
                last[layer].append(hidden[b, enc.prompt_last].to(torch_dtype))
                other = ~scored[b][:n]
                rest[layer].append(hidden[b, :n][other].to(torch.float32).sum(dim=0))
                if option is not None:
                    answer[layer].append(hidden[b, :n][torch.from_numpy(option)].to(torch_dtype))
        advance(len(chunk))
    tensors: dict[str, torch.Tensor] = {}
    for layer in layers:
        tensors[f"tokens.{layer}"] = (
            torch.cat(tokens[layer]) if tokens[layer] else torch.zeros(0, d_model, dtype=torch_dtype)
        )
        tensors[f"last.{layer}"] = torch.stack(last[layer])
        tensors[f"rest.{layer}"] = torch.stack(rest[layer])
        tensors[f"answer.{layer}"] = (
            torch.cat(answer[layer]) if answer[layer] else torch.zeros(0, d_model, dtype=torch_dtype)
        )
    return tensors


def _write_shard(path: Path, tensors: dict[str, torch.Tensor], key: str) -> None:
    """Atomically (temporary file + rename): a shard on disk is always complete."""
    tmp = path.with_name(path.name + ".tmp")
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)


def _bad(layer: int, n: int) -> int:
    raise ActivationCacheError(f"layer {layer} out of range for a model with {n} decoder layers")


def contiguous_by_kind(dialogues: Sequence[Dialogue]) -> list[Dialogue]:
    """The dialogues reordered so each kind is one block (kinds in order of first appearance)."""
    order: dict[str | None, list[Dialogue]] = {}
    for d in dialogues:
        order.setdefault(d.kind, []).append(d)
    return [d for block in order.values() for d in block]


def extract_by_kind(
    model: torch.nn.Module,
    tokenizer: Any,
    dialogues: Sequence[Dialogue],
    layers: Sequence[int],
    fingerprint: str,
    name: str = "data",
    **kwargs: Any,
) -> ActivationUnion:
    """`extract_activations` per kind (one cache each); dialogues must be contiguous by kind."""
    blocks: list[list[Dialogue]] = []
    for d in dialogues:
        if blocks and blocks[-1][0].kind == d.kind:
            blocks[-1].append(d)
        else:
            blocks.append([d])
    kinds = [b[0].kind for b in blocks]
    if len(set(kinds)) != len(kinds):
        raise ActivationCacheError("extract_by_kind needs the dialogues grouped by kind (see contiguous_by_kind)")
    return ActivationUnion(
        [
            extract_activations(model, tokenizer, block, layers, fingerprint, name=f"{name}-{block[0].kind}", **kwargs)
            for block in blocks
        ]
    )
