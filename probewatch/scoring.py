"""Offline scoring: dialogues -> residual capture -> probe scores -> per-dialogue aggregates.

The same numbers the live sidecar produces for the same tokens (the live/offline parity test
holds the two together): per-token scores come from `ProbeRuntime.score`, aggregates from
`probewatch.probes.aggregate`, token selection from the bundle manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from probewatch.capture import run_forward
from probewatch.data.chat import EncodedDialogue, encode_dialogue, pad_batch
from probewatch.data.dialogue import Dialogue
from probewatch.probes.aggregate import aggregate, token_values
from probewatch.probes.runtime import ProbeRuntime
from probewatch.probes.selection import selection_mask


@dataclass
class DialogueScores:
    """Scores of one dialogue: per probe, the selected tokens' scores and their aggregate."""

    index: int
    label: int | None
    kind: str | None
    group: str | None
    token_scores: dict[str, list[float]] = field(default_factory=dict)
    aggregate: dict[str, float] = field(default_factory=dict)
    flagged: dict[str, bool] = field(default_factory=dict)


def dialogue_selection(
    encoded: EncodedDialogue, token_selection: str, pieces: Sequence[str] | None = None
) -> np.ndarray:
    """Which tokens of an encoded dialogue a probe reads: the live rule (`selection_mask`) on its positions
    (`pieces`: each token's text, for `answer`; the bundle's vocabulary gives them, as it does live)."""
    positions = np.arange(len(encoded.input_ids))
    response = np.asarray(encoded.scored)
    return selection_mask(token_selection, positions, encoded.prompt_last + 1, response=response, pieces=pieces)


def _batches(items: Sequence, size: int) -> Iterator[tuple[int, Sequence]]:
    for i in range(0, len(items), size):
        yield i, items[i : i + size]


def score_dialogues(
    model: torch.nn.Module,
    tokenizer: object,
    runtime: ProbeRuntime,
    dialogues: Sequence[Dialogue],
    batch_size: int = 8,
    max_tokens: int | None = 1024,
    progress: bool = True,
) -> list[DialogueScores]:
    """Score every dialogue with every probe in `runtime` (an attention probe's token scores are its v_t)."""
    from tqdm.auto import tqdm

    pad_id = getattr(tokenizer, "pad_token_id", None) or 0
    device = next(model.parameters()).device
    results: list[DialogueScores] = []
    bar = tqdm(total=len(dialogues), desc="scoring", unit="dlg", disable=not progress)
    for offset, chunk in _batches(list(dialogues), batch_size):
        encoded = [_truncate(encode_dialogue(tokenizer, d), max_tokens) for d in chunk]
        ids, attn, _ = pad_batch(encoded, pad_id, side="right")
        rows = run_forward(model, runtime.layers, ids.to(device), attn.to(device))
        for b, (dialogue, enc) in enumerate(zip(chunk, encoded)):
            n = len(enc.input_ids)
            per_layer = {layer: hidden[b, :n] for layer, hidden in rows.items()}
            all_scores = runtime.score_layers(per_layer)
            result = DialogueScores(offset + b, dialogue.label, dialogue.kind, dialogue.group)
            for probe_id, scores in all_scores.items():
                bundle = runtime.bundle(probe_id)
                manifest = bundle.manifest
                vocab = bundle.vocabulary
                pieces = None if vocab is None else vocab.of(enc.input_ids)
                mask = torch.from_numpy(dialogue_selection(enc, manifest.token_selection, pieces))
                selected = scores.cpu()[mask].numpy()  # [m], or [m, 2] = (a, v) for an attention probe
                value = aggregate(selected, manifest.aggregation)
                result.token_scores[probe_id] = token_values(selected).tolist()
                result.aggregate[probe_id] = value
                result.flagged[probe_id] = bool(value >= manifest.threshold.value)
            results.append(result)
        bar.update(len(chunk))
    bar.close()
    return results


def _truncate(enc: EncodedDialogue, max_tokens: int | None) -> EncodedDialogue:
    """Keep the last `max_tokens` tokens (the scored region sits at the end)."""
    if max_tokens is None or len(enc.input_ids) <= max_tokens:
        return enc
    cut = len(enc.input_ids) - max_tokens
    return EncodedDialogue(enc.input_ids[cut:], enc.scored[cut:], enc.text, max(enc.prompt_last - cut, 0))


#: Public name for the truncation rule; training extraction applies the same one so that the
#: rows a probe is trained on are the rows `score_dialogues` scores.
truncate_encoded = _truncate
