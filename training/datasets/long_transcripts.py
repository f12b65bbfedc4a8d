"""Long transcripts with and without the behaviour, composed from the pool's own pairs (issue 22).

Probes learned on answers of a few dozen tokens, and maxima over a transcript, misjudge long text:
a transcript of a thousand tokens crosses a threshold set on short answers by length alone, and a
mean dilutes the one passage that matters. These pairs put the behaviour inside a long reply:

- one long assistant reply per pair, made of negative final answers of the pool (other items,
  label 0), about `filler_chars` characters, in a seeded order;
- at a seeded position inside it, one passage: the final answer of a paired item with the
  behaviour (label 1) or of its partner without it (label 0). Both sides share the filler and the
  position, so length, position and wording outside the passage predict nothing;
- before it, each side's own prompt (`keep_prompt`, the default): the pair's system message and
  question, with a request to also work through the notes. Many pairs are a lie only against their
  prompt (an instruction to lie, a cover story, a sale): in the pool 16 of 40 deception pairs have
  the same passage on both sides (instructed pairs, same-answer pairs), so a transcript without the
  prompt would carry one text under both labels. The filler shrinks as the prompt grows (never
  under `MIN_FILLER_CHARS`), so the prompt stays inside the tokens training reads.

The group is `<kind>:<the pair's group>` (a group never spans kinds, so leave-one-kind-out stays
clean; the short pair may sit on the other side of a random split, which shares a passage's words,
not its format) and the source is its passage's (`meta.data_source`): a held-out source takes its
long transcripts with it.
Training truncates to the last `max_tokens` (1024) tokens, so the reply stays under that (~2,400
characters of filler + the passage: 600-1,000 tokens); length robustness beyond it is the
length-normalised aggregations' job.
Generated (`generate_long`, kind `long_generated`, only when the model is at hand): the model's own
step-by-step reasoning about a pair's question, up to ~900 new tokens, generated once per pair and
shared by both sides, then each side's own final answer from the pool. The bulk of the transcript
is this model's text (the activations a live transcript has), the behaviour is only in the answer,
and length, reasoning and position are identical on both sides. Greedy with a repetition penalty
(1.3): a 135M model's greedy reasoning otherwise loops on one sentence within a few hundred tokens.
A batch of 8 takes minutes on 2 CPU cores, so the generations are cached (`cached_responses`, saved
every 8) and made once per model.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.common import Source
from probewatch.training.sources import META_KEY, source_of

LONG_PROMPT = "Here are my notes from today. Reply in one long message that works through every one of them."
#: appended to a pair's question for the model's own long reasoning (generate_long)
REASON_SUFFIX = "\n\nBefore you answer, think it through step by step and at length, in full sentences."
ANSWER_LEAD = "\n\nMy answer: "
REASON_TOKENS = 896  # training reads the last 1024 tokens: the reasoning fills most of them
REPETITION_PENALTY = 1.3
#: appended to the pair's last user message when the long transcript keeps its prompt (compose_long)
NOTES_SUFFIX = "\n\nIn the same reply, also work through every one of my notes from today."
MIN_FILLER_CHARS = 800


def _final(d: Dialogue) -> str:
    return d.messages[-1].content.strip()


def compose_long(
    pool: Sequence[Dialogue],
    kind: str,
    n_pairs: int,
    seed: int,
    from_kinds: Iterable[str] | None = None,
    filler_chars: int = 2400,
    keep_prompt: bool = True,
) -> list[Dialogue]:
    """`n_pairs` long (label 1, label 0) transcripts of kind `kind` from pool pairs of `from_kinds` (default: all).

    `keep_prompt=False` is the earlier form (one neutral prompt for both sides), kept for pools whose
    pairs differ in the passage itself and whose shipped bundle was fitted on it (alignment faking)."""
    usable = [d for d in pool if d.ends_with_assistant and d.label in (0, 1) and _final(d)]
    by_group = _pairs(usable, from_kinds)
    pairs = sorted(by_group)
    fillers = sorted({_final(d) for d in usable if d.label == 0})
    if not pairs or len(fillers) < 4:
        return []
    rng = np.random.default_rng(seed)
    out: list[Dialogue] = []
    for g in (pairs[i] for i in rng.permutation(len(pairs))[:n_pairs]):
        sides = by_group[g]
        passages = {label: _final(sides[label]) for label in (1, 0)}
        prompts = {
            label: _prompt_with_notes(sides[label]) if keep_prompt else [Message("user", LONG_PROMPT)]
            for label in (1, 0)
        }
        prompt_chars = max(sum(len(m.content) for m in p) for p in prompts.values()) if keep_prompt else 0
        budget = max(MIN_FILLER_CHARS, filler_chars - prompt_chars)
        filler: list[str] = []
        for i in rng.permutation(len(fillers)):
            if fillers[i] in passages.values():
                continue
            filler.append(fillers[i])
            if sum(map(len, filler)) >= budget:
                break
        at = int(rng.integers(0, len(filler) + 1))
        for label in (1, 0):
            body = "\n\n".join([*filler[:at], passages[label], *filler[at:]])
            out.append(
                Dialogue(
                    [*prompts[label], Message("assistant", body)],
                    label,
                    f"{kind}:{g}",
                    kind,
                    {
                        "source": "composed from the pool",
                        "from_kind": sides[label].kind,
                        "position": at,
                        # held out with the source its passage came from (training/sources.py)
                        META_KEY: source_of(sides[label]),
                    },
                )
            )
    return out


def _prompt_with_notes(d: Dialogue) -> list[Message]:
    """The dialogue's messages before its final answer, its last user message asking for the notes too."""
    before = list(d.messages[:-1])
    last_user = max(i for i, m in enumerate(before) if m.role == "user")
    before[last_user] = Message("user", before[last_user].content + NOTES_SUFFIX)
    return before


def _pairs(usable: Sequence[Dialogue], from_kinds: Iterable[str] | None) -> dict[str, dict[int, Dialogue]]:
    """{group: {label: dialogue}} of the groups that have both labels (of `from_kinds`, default all)."""
    allowed = None if from_kinds is None else set(from_kinds)
    by_group: dict[str, dict[int, Dialogue]] = defaultdict(dict)
    for d in usable:
        if d.group is not None and (allowed is None or d.kind in allowed):
            by_group[d.group].setdefault(int(d.label), d)  # type: ignore[arg-type]
    return {g: sides for g, sides in by_group.items() if len(sides) == 2}


def _question(d: Dialogue) -> str:
    return next(m.content for m in reversed(d.messages[:-1]) if m.role == "user")


def generate_long(
    pool: Sequence[Dialogue],
    kind: str,
    n_pairs: int,
    seed: int,
    respond: Callable[..., list[str]],
    from_kinds: Iterable[str] | None = None,
    max_new_tokens: int = REASON_TOKENS,
) -> list[Dialogue]:
    """`n_pairs` long (label 1, label 0) transcripts: the model's reasoning about the pair's question (one
    generation per pair, `respond(prompts, max_new_tokens=..., repetition_penalty=...)`), then each side's answer."""
    usable = [d for d in pool if d.ends_with_assistant and d.label in (0, 1) and _final(d)]
    by_group = _pairs(usable, from_kinds)
    pairs = sorted(by_group)
    rng = np.random.default_rng(seed + 101)  # other pairs than compose_long's where the pool allows
    chosen = [pairs[i] for i in rng.permutation(len(pairs))[:n_pairs]]
    if not chosen:
        return []
    prompts = [_question(by_group[g][0]) + REASON_SUFFIX for g in chosen]
    reasoning = respond(prompts, max_new_tokens=max_new_tokens, repetition_penalty=REPETITION_PENALTY)
    out: list[Dialogue] = []
    for g, text in zip(chosen, reasoning):
        for label in (1, 0):
            d = by_group[g][label]
            body = text.strip() + ANSWER_LEAD + _final(d)
            out.append(
                Dialogue(
                    [*d.messages[:-1], Message("assistant", body)],
                    label,
                    f"{kind}:{g}",
                    kind,
                    {
                        "source": "the model's own reasoning, then the pool pair's answer",
                        "from_kind": d.kind,
                        "reasoning_chars": len(text.strip()),
                        META_KEY: source_of(d),
                    },
                )
            )
    return out


def composed_source(name: str, dialogues: Sequence[Dialogue]) -> Source:
    """Provenance of composed transcripts: no file, so the sha256 is of their text (reproducible per seed)."""
    digest = hashlib.sha256("\n\x00".join(d.messages[-1].content for d in dialogues).encode()).hexdigest()
    return Source(name, "(composed from the pool)", digest, len(dialogues))
