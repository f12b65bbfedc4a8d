"""Feature interpretation: top-activating contexts per latent and latent-behaviour association.

`features.json` (beside the SAE; compact JSON, one object per latent):

    {"format": "probewatch-sae-features/1", "sae": {...}, "context": [before, after],
     "features": [{"id", "density", "max_act", "mean_act", "top_tokens": [[token, count], ...],
                   "description", "examples": [{"act", "at", "tokens": [...], "acts": [...], "source"}]}],
     "behaviours": {"deception": {"dataset", "pooling", "n_pos", "n_neg",
                                  "top": [{"id", "auroc", "mean_pos", "mean_neg", "diff"}]}}}

`examples[*].tokens` is the context window around the max-activating token (index `at`), with
`acts` the latent's activation on every window token (the highlight); tokens whose row was not
cached (position 0) get null. Descriptions are generated from the data, not by a language
model: the tokens the latent fires on most, plus the behaviour it separates best when its
AUROC there is far from 0.5 (e.g. `" lie", " false" | deception+ 0.81`). They are short on
purpose: the sidecar uses them as a Prometheus label.

Behaviour association, per behaviour pool (`probewatch.training.datasets`): per dialogue,
pool each latent over the probe's token selection (mean over response tokens, or the
generation-prompt token for refusal), then AUROC of that value for label 1 vs 0 and the
difference of means.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probewatch.probes.saes import FEATURES_FILENAME
from probewatch.probes.saes.sae import SAE
from probewatch.training.sae.activations import ActivationStore

FEATURES_FORMAT = "probewatch-sae-features/1"


@torch.no_grad()
def top_rows(
    sae: SAE, acts: torch.Tensor, n: int, batch_size: int = 8192
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per latent the n largest activations and their row indices, plus fire counts and sums.

    Returns (values [n, d_sae], rows [n, d_sae], fire_count [d_sae], act_sum [d_sae]).
    """
    d_sae = sae.cfg.d_sae
    best_v = torch.full((n, d_sae), -1.0)
    best_r = torch.full((n, d_sae), -1, dtype=torch.long)
    fired = torch.zeros(d_sae, dtype=torch.long)
    total = torch.zeros(d_sae, dtype=torch.float64)
    for start in range(0, acts.shape[0], batch_size):
        z = sae.encode(acts[start : start + batch_size].to(sae.device)).float().cpu()
        fired += (z > 0).sum(0)
        total += z.sum(0).double()
        k = min(n, z.shape[0])
        v, r = z.topk(k, dim=0)
        cat_v = torch.cat([best_v, v])
        cat_r = torch.cat([best_r, r + start])
        keep_v, keep_i = cat_v.topk(n, dim=0)
        best_v, best_r = keep_v, cat_r.gather(0, keep_i)
    return best_v, best_r, fired, total


def _row_lookup(store: ActivationStore) -> tuple[dict[tuple[int, int], int], list[list[int]]]:
    """(seq, pos) -> cached row, and per sequence the row of each position (-1 when uncached).

    Deduplicated positions share the row of the first sequence with the same prefix, found
    again by replaying the prefix hashes in sequence order (the rule of corpus.PrefixDedup)."""
    where = {(int(s), int(p)): i for i, (s, p) in enumerate(zip(store.seq.tolist(), store.pos.tolist()))}
    by_hash: dict[int, int] = {}
    rows_of: list[list[int]] = []
    for si, seq in enumerate(store.sequences):
        h, rows = 0, []
        for pos, tok in enumerate(seq.ids):
            h = hash((h, int(tok)))
            row = where.get((si, pos))
            if row is not None:
                by_hash.setdefault(h, row)
            else:
                row = by_hash.get(h, -1) if pos > 0 else -1
            rows.append(row)
        rows_of.append(rows)
    return where, rows_of


@torch.no_grad()
def interpret_features(
    sae: SAE,
    store: ActivationStore,
    tokenizer: Any,
    n_examples: int = 4,
    n_top_tokens: int = 24,
    before: int = 10,
    after: int = 3,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Per latent: density, max/mean activation, the tokens it fires on most, top contexts."""
    from tqdm.auto import tqdm

    n_keep = max(n_examples, n_top_tokens)
    values, rows, fired, total = top_rows(sae, store.acts, n_keep)
    n_rows = store.acts.shape[0]
    _, rows_of = _row_lookup(store)
    token_text: dict[int, str] = {}

    def text(tok: int) -> str:
        if tok not in token_text:
            token_text[tok] = tokenizer.decode([tok])
        return token_text[tok]

    # windows of every example, then one batched encode of all rows they need
    plans: list[list[tuple[float, int, int, list[int], list[int]]]] = []
    needed: set[int] = set()
    for j in range(sae.cfg.d_sae):
        plan = []
        for e in range(n_examples):
            v, r = float(values[e, j]), int(rows[e, j])
            if r < 0 or v <= 0:
                break
            s, p = int(store.seq[r]), int(store.pos[r])
            ids = store.sequences[s].ids
            lo, hi = max(0, p - before), min(len(ids), p + after + 1)
            window_rows = rows_of[s][lo:hi]
            needed.update(x for x in window_rows if x >= 0)
            plan.append((v, s, p - lo, ids[lo:hi], window_rows))
        plans.append(plan)
    order = sorted(needed)
    slot = {r: i for i, r in enumerate(order)}
    window_acts = torch.zeros((len(order), sae.cfg.d_sae), dtype=torch.float16)
    idx = torch.tensor(order, dtype=torch.long)
    for start in range(0, len(order), 8192):
        window_acts[start : start + 8192] = sae.encode(store.acts[idx[start : start + 8192]]).to(torch.float16)

    features = []
    for j in tqdm(range(sae.cfg.d_sae), desc="features", unit="latent", disable=not progress):
        count = int(fired[j])
        live = [int(r) for v, r in zip(values[:, j].tolist(), rows[:, j].tolist()) if r >= 0 and v > 0]
        top_tok = Counter(text(int(store.tok[r])) for r in live)
        prev_tok = Counter(text(store.sequences[int(store.seq[r])].ids[int(store.pos[r]) - 1]) for r in live)
        examples = []
        for v, s, at, ids, window_rows in plans[j]:
            acts = [_compact(float(window_acts[slot[r], j])) if r >= 0 else None for r in window_rows]
            examples.append(
                {
                    "act": round(v, 3),
                    "at": at,
                    "tokens": [text(t) for t in ids],
                    "acts": acts,
                    "source": store.sequences[s].source,
                }
            )
        features.append(
            {
                "id": j,
                "density": round(count / n_rows, 6),
                "max_act": round(float(values[0, j]), 3) if count else 0.0,
                "mean_act": round(float(total[j]) / count, 3) if count else 0.0,
                "top_tokens": [[t, c] for t, c in top_tok.most_common(5)],
                "prev_tokens": [[t, c] for t, c in prev_tok.most_common(3)],
                "examples": examples,
            }
        )
    return features


def _compact(x: float) -> float | int:
    """Two decimals, and a bare 0 for silent tokens (most of every window): keeps features.json small."""
    x = round(x, 2)
    return 0 if x == 0 else x


def _show(token: str) -> str:
    token = token.replace("\n", "\\n").replace("\t", "\\t")
    return token.strip() or "␣"


def pooled_latents(sae: SAE, rows: np.ndarray, offsets: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """[n_examples, d_sae]: each example's mean latent activation over its rows."""
    n = len(offsets) - 1
    out = np.zeros((n, sae.cfg.d_sae), dtype=np.float32)
    ex = np.repeat(np.arange(n), np.diff(offsets))
    with torch.no_grad():
        for start in range(0, rows.shape[0], batch_size):
            z = sae.encode(torch.from_numpy(np.ascontiguousarray(rows[start : start + batch_size]))).float().numpy()
            np.add.at(out, ex[start : start + batch_size], z)
    counts = np.maximum(np.diff(offsets), 1)[:, None]
    return out / counts


def auroc_columns(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of every column of x for labels 1 vs 0 (rank statistic with tied ranks averaged)."""
    from scipy.stats import rankdata

    y = labels.astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    ranks = rankdata(x, axis=0)
    return (ranks[y].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def behaviour_association(sae: SAE, pooled: np.ndarray, labels: np.ndarray, top: int = 25) -> list[dict[str, float]]:
    """Latents ranked by how well they separate label 1 from 0 (|AUROC - 0.5|), both directions."""
    au = auroc_columns(pooled, labels)
    pos, neg = pooled[labels == 1], pooled[labels == 0]
    mean_pos, mean_neg = pos.mean(0), neg.mean(0)
    order = np.argsort(-np.abs(au - 0.5), kind="stable")[:top]
    return [
        {
            "id": int(j),
            "auroc": round(float(au[j]), 4),
            "mean_pos": round(float(mean_pos[j]), 4),
            "mean_neg": round(float(mean_neg[j]), 4),
            "diff": round(float(mean_pos[j] - mean_neg[j]), 4),
            "fires_pos": round(float((pos[:, j] > 0).mean()), 3),
            "fires_neg": round(float((neg[:, j] > 0).mean()), 3),
        }
        for j in order
    ]


def describe(feature: dict[str, Any], associations: dict[str, list[dict[str, float]]], strong: float = 0.2) -> str:
    """Short data-derived description (a Prometheus label value, so < ~60 characters)."""
    if not feature["density"]:
        return "dead (never fires on the corpus)"
    raw = list(dict.fromkeys(t.strip() for t, _ in feature["top_tokens"][:3]))
    tokens = list(dict.fromkeys(_show(t)[:14] for t, _ in feature["top_tokens"][:3]))
    text = ", ".join(f'"{t}"' for t in tokens)
    if len(raw) == 1 and not any(ch.isalnum() for ch in raw[0]) and feature.get("prev_tokens"):
        # a newline / punctuation latent says little alone: name what it follows
        text += f' after "{_show(feature["prev_tokens"][0][0])[:14]}"'

    best = None
    for behaviour, ranked in associations.items():
        for entry in ranked:
            strong_enough = entry["id"] == feature["id"] and abs(entry["auroc"] - 0.5) >= strong
            if strong_enough and (best is None or abs(entry["auroc"] - 0.5) > abs(best[1] - 0.5)):
                best = (behaviour, entry["auroc"])
    if best:
        text += f" | {best[0]}{'+' if best[1] > 0.5 else '-'} {best[1]:.2f}"
    return text[:80]


def write_features_json(
    sae_dir: Path,
    sae: SAE,
    features: list[dict[str, Any]],
    behaviours: dict[str, dict[str, Any]],
    corpus: dict[str, Any],
    before: int,
    after: int,
) -> Path:
    associations = {b: info["top"] for b, info in behaviours.items()}
    for feature in features:
        feature["description"] = describe(feature, associations)
    doc = {
        "format": FEATURES_FORMAT,
        "sae": {
            "name": Path(sae_dir).name,
            "d_sae": sae.cfg.d_sae,
            "layer": sae.cfg.layer,
            "hook_name": sae.cfg.hook_name,
            "model": sae.cfg.model_name,
        },
        "corpus": corpus,
        "context": [before, after],
        "behaviours": behaviours,
        "features": features,
    }
    path = Path(sae_dir) / FEATURES_FILENAME
    path.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n")
    return path


def load_features_json(sae_dir: Path) -> dict[str, Any]:
    from probewatch.errors import ProbewatchError

    path = Path(sae_dir) / FEATURES_FILENAME
    if not path.is_file():
        raise ProbewatchError(f"{path} not found: run `probewatch sae interpret {sae_dir}` first")
    return json.loads(path.read_text())


def behaviour_pools(
    loaded: Any, sae: SAE, behaviours: Sequence[str], data_dir: Path | None, progress: bool = True
) -> dict[str, dict[str, Any]]:
    """Association tables per behaviour (extracts the pools' rows at the SAE's layer, cached)."""
    from probewatch.training.datasets import build_behaviour_data
    from probewatch.training.sae.probe import activations_for

    out = {}
    for behaviour in behaviours:
        data = build_behaviour_data(behaviour, data_dir)
        dialogues = data.pool
        # reuses `probewatch train`'s cache of the same pool when it holds this layer
        acts = activations_for(loaded, dialogues, sae.cfg.layer, f"{behaviour}-pool", progress)
        labels = np.array([d.label for d in dialogues])
        if data.token_selection == "prompt_last":
            last = acts.last_rows(sae.cfg.layer)
            pooled = pooled_latents(sae, last, np.arange(len(last) + 1))
            pooling = "generation-prompt token"
        else:
            rows, offsets = acts.token_rows(sae.cfg.layer)
            pooled = pooled_latents(sae, rows, offsets)
            pooling = "mean over response tokens"
        out[behaviour] = {
            "dataset": f"{behaviour} pool ({len(dialogues)} dialogues: "
            + ", ".join(sorted({str(d.kind) for d in dialogues}))
            + ")",
            "pooling": pooling,
            "n_pos": int((labels == 1).sum()),
            "n_neg": int((labels == 0).sum()),
            "top": behaviour_association(sae, pooled, labels),
        }
    return out
