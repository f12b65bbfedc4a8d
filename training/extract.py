"""Activation extraction: dialogues -> scored-region residuals of chosen layers, cached as shards.

Fitting many probes on many layers must never redo forward passes, so extraction runs once per
(model fingerprint, tokenizer, data, layers, truncation, dtype) and stores:

    <cache>/<fingerprint>/<name>-<key>/
        plan.json                 the length-sorted order and shard boundaries (written first)
        shard-00000.safetensors   per layer: `tokens.{L}` [rows, d] (scored-region rows, example
                                  by example), `last.{L}` [examples, d] (the generation-prompt
                                  row) and `rest.{L}` [examples, d] (float32 sum of every other
                                  row: prompt and closing tokens, so a probe reading `all`
                                  tokens with `mean` aggregation is exact without storing
                                  them); `examples` (original indices), `n_tokens`, `n_rest`
        index.json                written last: labels, groups, kinds, token counts, shard map

Rows are gathered exactly as `probewatch.scoring.score_dialogues` selects them (same encoding,
same truncation, right padding, `run_forward` which stops after the last wanted layer), so a
probe trained here scores the same numbers offline and live. Shards are written atomically and
skipped on rerun (resumable); a different model fingerprint lands in another folder (a cache
for another model is never reused).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probewatch import envs
from probewatch.capture import run_forward
from probewatch.data.chat import EncodedDialogue, encode_dialogue, pad_batch
from probewatch.data.dialogue import Dialogue
from probewatch.errors import ProbewatchError
from probewatch.jsonio import write_json_atomic
from probewatch.scoring import truncate_encoded

CACHE_FORMAT = "pwacts2"
PLAN_FILE = "plan.json"
INDEX_FILE = "index.json"


class ActivationCacheError(ProbewatchError):
    """An activation cache is incomplete, inconsistent or was made for another model."""


# -- keys ----------------------------------------------------------------------------------------
def data_hash(dialogues: Sequence[Dialogue]) -> str:
    """sha256 of the dialogues' messages, labels, groups and kinds (meta does not change rows)."""
    h = hashlib.sha256()
    for d in dialogues:
        obj = {"m": [[m.role, m.content] for m in d.messages], "l": d.label, "g": d.group, "k": d.kind}
        h.update(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def tokenizer_digest(tokenizer: Any) -> str:
    """The fingerprint covers weights and config, not the tokenizer or its chat template."""
    parts = [type(tokenizer).__name__, str(len(tokenizer)), str(getattr(tokenizer, "chat_template", "") or "")]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def cache_key(
    fingerprint: str,
    tokenizer: Any,
    dialogues: Sequence[Dialogue],
    layers: Sequence[int],
    max_tokens: int | None,
    dtype: str,
) -> str:
    spec = {
        "format": CACHE_FORMAT,
        "fingerprint": fingerprint,
        "tokenizer": tokenizer_digest(tokenizer),
        "data": data_hash(dialogues),
        "layers": sorted(layers),
        "max_tokens": max_tokens,
        "dtype": dtype,
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def cache_dir_for(fingerprint: str, name: str, key: str, root: Path | None = None) -> Path:
    root = Path(root) if root is not None else envs.activations_dir()
    return root / fingerprint.replace(":", "-") / f"{_safe(name)}-{key[:16]}"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "data"


# -- read side -----------------------------------------------------------------------------------
class _CacheMetadata:
    """What ActivationSet and ActivationUnion read the same way: `index` metadata and offsets."""

    root: Path
    index: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return self.index["fingerprint"]

    @property
    def layers(self) -> list[int]:
        return list(self.index["layers"])

    @property
    def d_model(self) -> int:
        return int(self.index["d_model"])

    @property
    def n_tokens(self) -> np.ndarray:
        raise NotImplementedError

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.n_tokens)]).astype(np.int64)

    def check_fingerprint(self, fingerprint: str) -> None:
        if fingerprint != self.fingerprint:
            raise ActivationCacheError(
                f"{self.root}: activations were extracted from model {self.fingerprint}, not {fingerprint}"
            )


@dataclass
class ActivationSet(_CacheMetadata):
    """A completed cache: example metadata plus lazy per-layer access to the rows.

    Rows come back in the original dialogue order; `offsets[i]:offsets[i+1]` are example i's
    scored-region rows, so both per-token and per-example training read the same arrays.
    """

    root: Path
    index: dict[str, Any]

    @classmethod
    def open(cls, root: str | Path) -> ActivationSet:
        root = Path(root)
        path = root / INDEX_FILE
        if not path.is_file():
            raise ActivationCacheError(f"{root}: no {INDEX_FILE} (extraction incomplete; rerun it to resume)")
        index = json.loads(path.read_text())
        if index.get("format") != CACHE_FORMAT:
            raise ActivationCacheError(f"{path}: cache format {index.get('format')!r}, expected {CACHE_FORMAT!r}")
        return cls(root, index)

    # metadata
    def __len__(self) -> int:
        return int(self.index["n_examples"])

    @property
    def labels(self) -> np.ndarray:
        """int array; -1 where a dialogue had no label."""
        return np.array([-1 if x is None else x for x in self.index["labels"]], dtype=np.int64)

    @property
    def groups(self) -> np.ndarray:
        return np.array(self.index["groups"], dtype=object)

    @property
    def kinds(self) -> np.ndarray:
        return np.array(self.index["kinds"], dtype=object)

    @property
    def n_tokens(self) -> np.ndarray:
        return np.array(self.index["n_tokens"], dtype=np.int64)

    # rows
    def _shards(self) -> list[dict[str, Any]]:
        return self.index["shards"]

    def _load(self, layer: int, what: str) -> list[torch.Tensor]:
        if layer not in self.layers:
            raise ActivationCacheError(f"{self.root}: layer {layer} not extracted (layers: {self.layers})")
        parts = []
        for shard in self._shards():
            with safe_open(str(self.root / shard["file"]), framework="pt") as fh:
                parts.append(fh.get_tensor(f"{what}.{layer}"))
        return parts

    def token_rows(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows [n_rows, d] float32 in original example order, offsets [n_examples + 1])."""
        parts = self._load(layer, "tokens")
        stored = torch.cat(parts).to(torch.float32).numpy() if parts else np.zeros((0, self.d_model), np.float32)
        return stored[self._row_gather()], self.offsets

    def last_rows(self, layer: int) -> np.ndarray:
        """[n_examples, d]: the generation-prompt (prompt_last) row of each example."""
        stored = torch.cat(self._load(layer, "last")).to(torch.float32).numpy()
        return stored[self._example_gather()]

    def mean_rows(self, layer: int) -> np.ndarray:
        """[n_examples, d]: each example's mean over its scored-region rows."""
        rows, offsets = self.token_rows(layer)
        return segment_mean(rows, offsets)

    def rest_sums(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """([n_examples, d] float32 sum of the rows outside the scored region, [n_examples] their count)."""
        stored = torch.cat(self._load(layer, "rest")).to(torch.float32).numpy()
        return stored[self._example_gather()], np.asarray(self.index["n_rest"], dtype=np.int64)

    def _example_gather(self) -> np.ndarray:
        """Position of each original example in the stored (shard) order."""
        stored_order = np.concatenate([np.asarray(s["examples"], dtype=np.int64) for s in self._shards()])
        where = np.empty_like(stored_order)
        where[stored_order] = np.arange(len(stored_order))
        return where

    def _row_gather(self) -> np.ndarray:
        n_tok = self.n_tokens
        stored_order = np.concatenate([np.asarray(s["examples"], dtype=np.int64) for s in self._shards()])
        stored_start = np.concatenate([[0], np.cumsum(n_tok[stored_order])])[:-1]
        start = np.empty(len(n_tok), dtype=np.int64)
        start[stored_order] = stored_start
        return expand_ranges(start, n_tok)


def expand_ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n) without a Python loop."""
    lengths = np.asarray(lengths, dtype=np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    base = np.repeat(np.asarray(starts, dtype=np.int64) - (ends - lengths), lengths)
    return base + np.arange(total, dtype=np.int64)


def segment_mean(rows: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Per-segment mean of rows (segments given by offsets); empty segments give zeros."""
    sums = (
        np.add.reduceat(rows.astype(np.float64), offsets[:-1], axis=0)
        if len(rows)
        else np.zeros((len(offsets) - 1, rows.shape[1]))
    )
    counts = np.diff(offsets)
    sums[counts == 0] = 0.0  # reduceat returns the next row for empty segments
    return (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)


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
    n_model_layers = len(find_decoder_layers(model))
    layers = sorted(
        {
            int(layer) % n_model_layers
            if -n_model_layers <= int(layer) < n_model_layers
            else _bad(layer, n_model_layers)
            for layer in layers
        }
    )
    torch_dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
    key = cache_key(fingerprint, tokenizer, dialogues, layers, max_tokens, dtype)
    root = cache_dir_for(fingerprint, name, key, Path(cache_root) if cache_root else None)
    if (root / INDEX_FILE).is_file():
        return ActivationSet.open(root)
    same = find_by_key(root.parent, key)  # the same dialogues extracted under another name (e.g. as an OOD set)
    if same is not None:
        return same
    root.mkdir(parents=True, exist_ok=True)

    encoded: list[EncodedDialogue] = []
    for i, d in enumerate(dialogues):
        try:
            encoded.append(truncate_encoded(encode_dialogue(tokenizer, d), max_tokens))
        except ValueError as exc:
            raise ActivationCacheError(f"{name}: dialogue {i} (group {d.group}): {exc}") from exc
    lengths = [len(e.input_ids) for e in encoded]
    n_rows = [e.n_scored for e in encoded]
    d_model = hidden_size(model)
    order, shards = _plan_shards(
        lengths, n_rows, len(layers), d_model, torch.finfo(torch_dtype).bits // 8, shard_examples, shard_bytes
    )
    plan = {"key": key, "shards": shards}
    plan_path = root / PLAN_FILE
    if plan_path.is_file() and json.loads(plan_path.read_text()).get("key") != key:
        raise ActivationCacheError(f"{plan_path}: belongs to another extraction; delete {root}")
    write_json_atomic(plan_path, plan)

    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = next(model.parameters()).device
    done = [k for k in range(len(shards)) if (root / _shard_name(k)).is_file()]
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
        tokens: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        last: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        rest: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        for batch in _batches(members, lengths, batch_size, max_batch_tokens):
            chunk = [encoded[i] for i in batch]
            ids, attn, scored = pad_batch(chunk, pad_id, side="right")
            rows = run_forward(model, layers, ids.to(device), attn.to(device))
            for layer, hidden in rows.items():
                hidden = hidden.to("cpu")
                for b, enc in enumerate(chunk):
                    n = len(enc.input_ids)
                    tokens[layer].append(hidden[b][scored[b]].to(torch_dtype))
                    last[layer].append(hidden[b, enc.prompt_last].to(torch_dtype))
                    other = ~scored[b][:n]
                    rest[layer].append(hidden[b, :n][other].to(torch.float32).sum(dim=0))
            bar.update(len(batch))
        tensors = {
            "examples": torch.tensor(members, dtype=torch.int64),
            "n_tokens": torch.tensor([n_rows[i] for i in members], dtype=torch.int64),
        }
        for layer in layers:
            tensors[f"tokens.{layer}"] = (
                torch.cat(tokens[layer]) if tokens[layer] else torch.zeros(0, d_model, dtype=torch_dtype)
            )
            tensors[f"last.{layer}"] = torch.stack(last[layer])
            tensors[f"rest.{layer}"] = torch.stack(rest[layer])
        tmp = root / (_shard_name(k) + ".tmp")
        save_file({n: t.contiguous() for n, t in tensors.items()}, str(tmp), metadata={"key": key})
        os.replace(tmp, root / _shard_name(k))
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
        "seq_len": lengths,
        "shards": [{"file": _shard_name(k), "examples": members} for k, members in enumerate(shards)],
    }
    write_json_atomic(root / INDEX_FILE, index)
    return ActivationSet(root, index)


def find_by_key(folder: Path, key: str) -> ActivationSet | None:
    """A completed cache in `folder` with exactly this key, whatever name it was extracted under."""
    if not folder.is_dir():
        return None
    for index_path in sorted(folder.glob(f"*-{key[:16]}/{INDEX_FILE}")):
        try:
            found = ActivationSet.open(index_path.parent)
        except (ActivationCacheError, OSError, ValueError):
            continue
        if found.index.get("key") == key:
            return found
    return None


def _shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


def _bad(layer: int, n: int) -> int:
    raise ActivationCacheError(f"layer {layer} out of range for a model with {n} decoder layers")


# -- several caches as one -------------------------------------------------------------------------
class ActivationUnion(_CacheMetadata):
    """Several ActivationSets (e.g. one per data kind) read as one, in the order given.

    Extracting kind by kind means adding or editing one kind of data re-extracts only that kind.
    Same read API as ActivationSet.
    """

    def __init__(self, parts: Sequence[ActivationSet]) -> None:
        if not parts:
            raise ActivationCacheError("an activation union needs at least one part")
        fingerprints = {p.fingerprint for p in parts}
        if len(fingerprints) != 1:
            raise ActivationCacheError(
                f"activation caches from different models cannot be combined: {sorted(fingerprints)}"
            )
        self.parts = list(parts)
        self.root = self.parts[0].root
        key = hashlib.sha256("".join(p.index["key"] for p in parts).encode()).hexdigest()
        self.index = {
            "key": key,
            "parts": [str(p.root) for p in parts],
            "fingerprint": parts[0].fingerprint,
            "layers": sorted(set.intersection(*(set(p.layers) for p in parts))),
            "d_model": parts[0].d_model,
            "n_examples": sum(len(p) for p in parts),
        }

    def __len__(self) -> int:
        return int(self.index["n_examples"])

    @property
    def labels(self) -> np.ndarray:
        return np.concatenate([p.labels for p in self.parts])

    @property
    def groups(self) -> np.ndarray:
        return np.concatenate([p.groups for p in self.parts])

    @property
    def kinds(self) -> np.ndarray:
        return np.concatenate([p.kinds for p in self.parts])

    @property
    def n_tokens(self) -> np.ndarray:
        return np.concatenate([p.n_tokens for p in self.parts])

    def token_rows(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([p.token_rows(layer)[0] for p in self.parts]), self.offsets

    def last_rows(self, layer: int) -> np.ndarray:
        return np.concatenate([p.last_rows(layer) for p in self.parts])

    def mean_rows(self, layer: int) -> np.ndarray:
        rows, offsets = self.token_rows(layer)
        return segment_mean(rows, offsets)

    def rest_sums(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [p.rest_sums(layer) for p in self.parts]
        return np.concatenate([s for s, _ in parts]), np.concatenate([n for _, n in parts])


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
