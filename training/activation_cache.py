"""The activation cache: its layout, keys and read side (`ActivationSet`, `ActivationUnion`).

Fitting many probes on many layers must never redo forward passes, so extraction runs once per
(model fingerprint, tokenizer, data, layers, truncation, dtype) and stores:

    <cache>/<fingerprint>/<name>-<key>/
        plan.json                 the length-sorted order and shard boundaries (written first)
        shard-00000.safetensors   per layer: `tokens.{L}` [rows, d] (scored-region rows, example
                                  by example), `last.{L}` [examples, d] (the generation-prompt
                                  row) and `rest.{L}` [examples, d] (float32 sum of every other
                                  row: prompt and closing tokens, so a probe reading `all`
                                  tokens with `mean` aggregation is exact without storing
                                  them); `answer.{L}` [answer rows, d] (the prompt rows of the
                                  option a multiple-choice reply names, example by example, for
                                  token selection `answer`; only examples whose reply names one);
                                  `examples` (original indices), `n_tokens`, `n_rest`, `n_answer`
        index.json                written last: labels, groups, kinds, token counts, shard map

Rows are gathered exactly as `probewatch.scoring.score_dialogues` selects them (same encoding,
same truncation, right padding, `run_forward` which stops after the last wanted layer), so a
probe trained here scores the same numbers offline and live. Shards are written atomically and
skipped on rerun (resumable); a different model fingerprint lands in another folder (a cache
for another model is never reused). `training/extract.py` writes caches; this module names and reads them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from probewatch import envs
from probewatch.data.dialogue import Dialogue
from probewatch.errors import ProbewatchError

CACHE_FORMAT = "pwacts3"
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
    from probewatch.probes.answer_option import RULE_VERSION

    spec = {
        "format": CACHE_FORMAT,
        "answer_rule": RULE_VERSION,  # the option rows token selection `answer` reads were chosen by this rule
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

    def rest_sums(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        """([n_examples, d] float32 sum of the rows outside the scored region, [n_examples] their count)."""
        stored = torch.cat(self._load(layer, "rest")).to(torch.float32).numpy()
        return stored[self._example_gather()], np.asarray(self.index["n_rest"], dtype=np.int64)

    @property
    def n_answer(self) -> np.ndarray:
        """[n_examples]: the option rows token selection `answer` reads instead of the reply (0: the reply)."""
        return np.asarray(self.index["n_answer"], dtype=np.int64)

    def answer_rows(self, layer: int) -> np.ndarray:
        """[sum(n_answer), d] float32: the option rows of the examples whose reply names an option, in
        original example order (the examples with n_answer == 0 have none)."""
        parts = self._load(layer, "answer")
        stored = torch.cat(parts).to(torch.float32).numpy() if parts else np.zeros((0, self.d_model), np.float32)
        return stored[self._row_gather(self.n_answer)]

    def _example_gather(self) -> np.ndarray:
        """Position of each original example in the stored (shard) order."""
        stored_order = np.concatenate([np.asarray(s["examples"], dtype=np.int64) for s in self._shards()])
        where = np.empty_like(stored_order)
        where[stored_order] = np.arange(len(stored_order))
        return where

    def _row_gather(self, counts: np.ndarray | None = None) -> np.ndarray:
        """Stored position of each row, in original example order (`counts`: rows per example; the reply's)."""
        n_tok = self.n_tokens if counts is None else counts
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


def shard_name(k: int) -> str:
    return f"shard-{k:05d}.safetensors"


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

    def rest_sums(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [p.rest_sums(layer) for p in self.parts]
        return np.concatenate([s for s, _ in parts]), np.concatenate([n for _, n in parts])

    @property
    def n_answer(self) -> np.ndarray:
        return np.concatenate([p.n_answer for p in self.parts])

    def answer_rows(self, layer: int) -> np.ndarray:
        return np.concatenate([p.answer_rows(layer) for p in self.parts])
