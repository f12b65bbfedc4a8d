"""Data sources: who wrote a pool example and in what format, one level coarser than its kind.

A held-out *kind* shares its author and format with the kinds it is trained beside (the six
scenario kinds are one author's writing; `liar_math` is the liar detector's format), so
leave-one-kind-out overstates what a probe does on data from elsewhere (issue 22: 0.86 on held-out
kinds vs 0.74 on another project's role-play set). Holding out a whole *source* asks the question
that matters for unseen data.

`source_of(dialogue)` is, in order: `meta["data_source"]` (a builder or a JSONL line may set it),
`KIND_SOURCES[kind]` (the built-in kinds, below; docs/datasets.md lists them), else the kind
itself (an unknown kind is its own source, so nothing is merged by accident). `probewatch train
--data` files tag each dialogue with the file's name (`stage_data`), so every file is a source.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from probewatch.data.dialogue import Dialogue
from probewatch.training.datasets.refusal_formats import FORMATS, kind_of
from probewatch.training.metrics import flagged_share

META_KEY = "data_source"

#: the model's own answers (plain-traffic negatives, and data a later builder generates with the model)
MODEL_ANSWERS = "model_answers"
#: everything written for probewatch (scenario pairs, contrast reasoning, framings, belief sentences)
PROBEWATCH_WRITTEN = "probewatch_written"

#: built-in kind -> source (author / dataset / format of origin). Kinds of one public dataset in
#: one format share a source; hand-written kinds share `probewatch_written`.
KIND_SOURCES: dict[str, str] = {
    # deception
    "instructed_pairs": "truth_statements",  # RepE facts + Azaria & Mitchell statements, instructed personas
    "false_assertions": "truth_statements",  # the same statement files asserted plainly (training only)
    "liar_questions": "liar_detector",  # Pacchiardi et al., How to Catch an AI Liar (question files + lie instructions)
    "liar_math": "liar_detector",
    "liar_self_knowledge": "liar_detector",
    "instructed_same_answer": "liar_detector",
    "roleplay_excuse": PROBEWATCH_WRITTEN,
    "sales_lie": PROBEWATCH_WRITTEN,
    "sandbagging": PROBEWATCH_WRITTEN,
    "lie_by_omission": PROBEWATCH_WRITTEN,
    "cover_story": PROBEWATCH_WRITTEN,
    "denial_confession": PROBEWATCH_WRITTEN,
    "mm_sandbagging": "mesa_and_mask",
    "mm_honesty_evasion": "mesa_and_mask",
    "mm_strategic_deception": "mesa_and_mask",
    "mm_sycophancy": "mesa_and_mask",
    # alignment faking
    "af_training": PROBEWATCH_WRITTEN,
    "af_evaluation": PROBEWATCH_WRITTEN,
    "af_oversight": PROBEWATCH_WRITTEN,
    "persona_goal_guarding": "anthropic_persona",
    "persona_oversight": "anthropic_persona",
    # evaluation awareness
    "eval_statement": PROBEWATCH_WRITTEN,
    "eval_reasoning": PROBEWATCH_WRITTEN,
    "eval_choice": PROBEWATCH_WRITTEN,
    "eval_cot": "compact_llms_eval_awareness",
    # monitored framing
    "free_tier": "greenblatt_prompts",
    "free_tier_tag_only": "greenblatt_prompts",
    "eval_context": PROBEWATCH_WRITTEN,
    "mm_audit": "mesa_and_mask",
    "test_deploy_prompts": "compact_llms_eval_awareness",
    # refusal: the instructions plain and in every request format (each row also says so in its meta)
    "refusal_train": "refusal_direction",
    **{kind_of(fmt): "refusal_direction" for fmt in FORMATS},
    # every behaviour: ordinary requests answered by the model (label 0, training only)
    "plain_traffic": MODEL_ANSWERS,
}


def source_of(dialogue: Dialogue) -> str:
    """The dialogue's source: its meta's `data_source`, else its kind's, else its kind."""
    explicit = (dialogue.meta or {}).get(META_KEY)
    if explicit:
        return str(explicit)
    kind = dialogue.kind or "?"
    return KIND_SOURCES.get(kind, kind)


def source_array(pool: Sequence[Dialogue]) -> np.ndarray:
    """`source_of` every pool example, aligned with the activation cache (object array)."""
    return np.array([source_of(d) for d in pool], dtype=object)


def tag_source(dialogues: Sequence[Dialogue], source: str) -> list[Dialogue]:
    """The dialogues with `data_source` set where a line did not set its own (user files: the file's name)."""
    for d in dialogues:
        if not (d.meta or {}).get(META_KEY):
            d.meta = {**(d.meta or {}), META_KEY: source}
    return list(dialogues)


@dataclass
class SourceCounts:
    """Examples of one source in the pool: its kinds, counts by label, and whether it is held out."""

    kinds: list[str] = field(default_factory=list)
    n: int = 0
    positive: int = 0
    negative: int = 0
    held_out: bool = False  # evaluable (not training-only, has positives): an outer source of the nested estimate


def source_counts(
    sources: np.ndarray, kinds: np.ndarray, labels: np.ndarray, train_only: Sequence[str] = ()
) -> dict[str, SourceCounts]:
    """Per source (first-appearance order): kinds, sizes and whether the nested estimate holds it out."""
    out: dict[str, SourceCounts] = {}
    evaluable = set(evaluable_sources(sources, kinds, labels, train_only))
    for src, kind, y in zip(sources.tolist(), kinds.tolist(), labels.tolist()):
        entry = out.setdefault(str(src), SourceCounts())
        if kind not in entry.kinds:
            entry.kinds.append(str(kind))
        entry.n += 1
        entry.positive += int(y == 1)
        entry.negative += int(y != 1)
    for src, entry in out.items():
        entry.held_out = src in evaluable
    return out


def evaluable_sources(
    sources: np.ndarray, kinds: np.ndarray, labels: np.ndarray, train_only: Sequence[str] = ()
) -> list[str]:
    """Sources that can be held out: with positives outside the training-only kinds (sorted).

    A source with both labels is scored on its own; one with positives only against the control set."""
    scored = ~np.isin(kinds, list(train_only))
    return sorted({str(s) for s in sources[scored & (labels == 1)].tolist()})


@dataclass
class SourceAtThreshold:
    """The shipped probe at the shipped threshold on one source's test-split examples."""

    recall: float | None
    fpr_negatives: float | None
    n_pos: int
    n_neg: int


def per_source_at_threshold(
    scores: np.ndarray, labels: np.ndarray, sources: np.ndarray, idx: np.ndarray, threshold: float
) -> dict[str, SourceAtThreshold]:
    """Per source among examples `idx`: recall (positives >= threshold) and the share of negatives flagged.

    Alerts fire at score >= threshold, as live."""
    idx = np.asarray(idx, dtype=np.int64)
    s, y, src = np.asarray(scores, dtype=np.float64)[idx], np.asarray(labels)[idx], np.asarray(sources)[idx]
    out: dict[str, SourceAtThreshold] = {}
    for name in dict.fromkeys(src.tolist()):
        sel = src == name
        pos, neg = s[sel & (y == 1)], s[sel & (y != 1)]
        out[str(name)] = SourceAtThreshold(
            recall=flagged_share(pos, threshold),
            fpr_negatives=flagged_share(neg, threshold),
            n_pos=int(pos.size),
            n_neg=int(neg.size),
        )
    return out
