"""Residual activations of one layer for the SAE corpus, extracted once and cached on disk.

Layout of a cache folder (resumable; `index.json` is written last and marks it complete):

    corpus.jsonl                 the token sequences (ids, source, group, split) + build settings
    shard-00000.safetensors      acts [rows, d] float16, seq [rows] int32, pos [rows] int32, tok [rows] int32
    index.json                   model fingerprint, layer, d_model, shard list, row counts, norms

Rows skipped on purpose (documented in docs/sae.md):
- position 0 of every sequence: the first token is an attention sink whose residual norm is
  ~100x the others (23k vs 200 at layer 15 of SmolLM2); including it would let a handful of
  rows dominate the reconstruction loss. The runtime never scores it either (response tokens).
- repeated prefixes: the chat template's system prompt produces identical residuals in every
  dialogue (causal model, same prefix -> same rows); each distinct prefix is kept once.
- massive activations (on load, not on disk): rows whose norm exceeds `outlier_factor` (10) x
  the median norm. In SmolLM2 these are the first content token after a BOS-like `<|im_start|>`
  in plain text (32 of 258k rows at layer 15, norms 5k-25k vs a median of 175) and they would
  carry over half of the total variance; like position 0 they are attention sinks, never scored.
  Their count and the threshold are recorded in the training report, and the CE evaluation
  leaves such rows unspliced too.
Rows are stored as float16 (checked for overflow), which halves the cache; the SAE trains in fp32.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from probewatch.errors import ProbewatchError
from probewatch.jsonio import write_json_atomic
from probewatch.training.sae.corpus import PrefixDedup, TextSequence

INDEX_FILE = "index.json"
CORPUS_FILE = "corpus.jsonl"
FORMAT = "pw-sae-acts1"


class SAECacheError(ProbewatchError):
    """An SAE activation cache is incomplete or was made for another model / layer."""


@dataclass
class ActivationStore:
    """All cached rows in memory: acts [N, d] float32 and, per row, its sequence, position and token."""

    acts: torch.Tensor
    seq: torch.Tensor
    pos: torch.Tensor
    tok: torch.Tensor
    is_eval: torch.Tensor  # bool [N]
    layer: int
    fingerprint: str
    sequences: list[TextSequence]
    max_norm: float | None = None  # rows above this norm were dropped as massive activations
    n_dropped: int = 0

    @property
    def d(self) -> int:
        return int(self.acts.shape[1])

    def split(self, name: str) -> torch.Tensor:
        """Row indices of the train or eval split."""
        mask = self.is_eval if name == "eval" else ~self.is_eval
        return mask.nonzero().squeeze(1)


def keep_masks(sequences: Sequence[TextSequence]) -> list[list[bool]]:
    """Per sequence, which positions become training rows (not position 0, not a repeated prefix)."""
    dedup = PrefixDedup()
    return [dedup.keep(seq.ids) for seq in sequences]


def _batches(lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def extract_activations(
    model: torch.nn.Module,
    layer: int,
    sequences: Sequence[TextSequence],
    out_dir: Path,
    fingerprint: str,
    corpus_meta: dict[str, Any],
    batch_tokens: int = 4096,
    shard_rows: int = 65_536,
    progress: bool = True,
) -> Path:
    """Run the model over `sequences` and cache layer `layer`'s kept rows (resumable)."""
    from tqdm.auto import tqdm

    from probewatch.capture import run_forward
    from probewatch.training.sae.corpus import save_corpus

    out_dir = Path(out_dir)
    if (out_dir / INDEX_FILE).is_file():
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    corpus_path = out_dir / CORPUS_FILE
    if not corpus_path.is_file():
        save_corpus(corpus_path, sequences, corpus_meta)
    masks = keep_masks(sequences)
    batches = _batches([len(s.ids) for s in sequences], batch_tokens)
    # shard plan: consecutive batches until shard_rows kept rows
    plan: list[list[int]] = [[]]
    rows_in = 0
    for b, batch in enumerate(batches):
        n = sum(sum(masks[i]) for i in batch)
        if rows_in and rows_in + n > shard_rows:
            plan.append([])
            rows_in = 0
        plan[-1].append(b)
        rows_in += n
    device = next(model.parameters()).device
    total = sum(sum(m) for m in masks)
    bar = tqdm(total=total, desc=f"activations L{layer}", unit="tok", unit_scale=True, disable=not progress)
    shards, sq_sum, count, max_abs = [], 0.0, 0, 0.0
    for k, batch_ids in enumerate(plan):
        name = f"shard-{k:05d}.safetensors"
        shards.append(name)
        path = out_dir / name
        if path.is_file():
            with safe_open(str(path), "pt") as fh:
                n = fh.get_slice("seq").get_shape()[0]
            bar.update(n)
            continue
        parts: dict[str, list[torch.Tensor]] = {"acts": [], "seq": [], "pos": [], "tok": []}
        for b in batch_ids:
            idx = batches[b]
            width = max(len(sequences[i].ids) for i in idx)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            attn = torch.zeros_like(ids)
            keep = torch.zeros((len(idx), width), dtype=torch.bool)
            for r, i in enumerate(idx):
                n = len(sequences[i].ids)
                ids[r, :n] = torch.tensor(sequences[i].ids)
                attn[r, :n] = 1
                keep[r, :n] = torch.tensor(masks[i])
            rows = run_forward(model, [layer], ids.to(device), attn.to(device), row_mask=keep)[layer].float().cpu()
            where = keep.nonzero()
            parts["acts"].append(rows)
            parts["seq"].append(torch.tensor(idx, dtype=torch.int32)[where[:, 0]])
            parts["pos"].append(where[:, 1].to(torch.int32))
            parts["tok"].append(ids[keep].to(torch.int32))
            bar.update(rows.shape[0])
        acts = torch.cat(parts["acts"])
        max_abs = max(max_abs, float(acts.abs().max()))
        if max_abs >= 6.0e4:
            raise SAECacheError(f"layer {layer} activations reach {max_abs:.0f}, beyond float16; cannot cache as fp16")
        tensors = {"acts": acts.to(torch.float16), **{n: torch.cat(v) for n, v in parts.items() if n != "acts"}}
        tmp = path.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        os.replace(tmp, path)
    bar.close()
    for name in shards:  # norm statistics over everything (also over shards kept from a previous run)
        with safe_open(str(out_dir / name), "pt") as fh:
            acts = fh.get_tensor("acts").float()
        sq_sum += float((acts**2).sum())
        count += acts.shape[0]
        max_abs = max(max_abs, float(acts.abs().max()))
    write_json_atomic(
        out_dir / INDEX_FILE,
        {
            "format": FORMAT,
            "fingerprint": fingerprint,
            "layer": layer,
            "d_model": int(acts.shape[1]),
            "shards": shards,
            "rows": count,
            "mean_sq_norm": sq_sum / max(count, 1),
            "max_abs": max_abs,
        },
    )
    return out_dir


def load_activations(
    cache_dir: Path,
    expected_fingerprint: str | None = None,
    expected_layer: int | None = None,
    outlier_factor: float | None = 10.0,
) -> ActivationStore:
    """Load a complete cache into memory (float32), dropping massive-activation rows (see module doc)."""
    from probewatch.training.sae.corpus import load_corpus

    cache_dir = Path(cache_dir)
    index_path = cache_dir / INDEX_FILE
    if not index_path.is_file():
        raise SAECacheError(f"{cache_dir}: incomplete activation cache (no {INDEX_FILE}); rerun to finish it")
    index = json.loads(index_path.read_text())
    if expected_fingerprint and index["fingerprint"] != expected_fingerprint:
        raise SAECacheError(f"{cache_dir}: cached for model {index['fingerprint']}, not {expected_fingerprint}")
    if expected_layer is not None and index["layer"] != expected_layer:
        raise SAECacheError(f"{cache_dir}: cached for layer {index['layer']}, not {expected_layer}")
    sequences, _ = load_corpus(cache_dir / CORPUS_FILE)
    parts: dict[str, list[torch.Tensor]] = {"acts": [], "seq": [], "pos": [], "tok": []}
    for name in index["shards"]:
        with safe_open(str(cache_dir / name), "pt") as fh:
            for key in parts:
                parts[key].append(fh.get_tensor(key))
    acts = torch.cat(parts["acts"]).float()
    seq = torch.cat(parts["seq"]).long()
    pos = torch.cat(parts["pos"]).long()
    tok = torch.cat(parts["tok"]).long()
    max_norm, n_dropped = None, 0
    if outlier_factor:
        norms = acts.norm(dim=1)
        max_norm = float(outlier_factor * norms.median())
        keep = norms <= max_norm
        n_dropped = int((~keep).sum())
        if n_dropped:
            acts, seq, pos, tok = acts[keep], seq[keep], pos[keep], tok[keep]
    is_eval_seq = torch.tensor([s.split == "eval" for s in sequences])
    return ActivationStore(
        acts=acts,
        seq=seq,
        pos=pos,
        tok=tok,
        is_eval=is_eval_seq[seq],
        layer=index["layer"],
        fingerprint=index["fingerprint"],
        sequences=sequences,
        max_norm=max_norm,
        n_dropped=n_dropped,
    )
