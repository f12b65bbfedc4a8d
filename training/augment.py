"""Training-time augmentation: labelled copies of pool items that teach a probe what not to read.

`sincerity`: a share of the items whose last message is the assistant's get a copy with a sincerity
assertion in front of the answer ("Honestly, ...", "You can trust me on this: ..."), on both labels. A
liar who says "honestly" is still lying and an honest answer stays honest, so the label is kept; a probe
fitted on both then cannot score the assertion itself as honesty. Without it, the evasion benchmark's
held-out assertion (`training/evasion.py` `SINCERE_PREFIX`, never among `SINCERITY_PHRASES`) moved the
shipped deception probe's positives down by a median of 2.8 logits and its recall from 0.38 to 0.07.

`monitoring`: a share of each label's items get a copy whose system prompt names a watcher (logging,
human review, an activation monitor; some also ask the model to stay undetected). Being watched is not
the behaviour, so the label is kept. Without it, the evasion benchmark's "told it is monitored" instruction
raised every score of the shipped deception probe, flagging 8% of honest answers at its threshold (0%
unmodified). Never a default for the monitoring-cue probes (eval awareness, monitored framing): there a
watcher in the prompt is the very thing they detect.

`paraphrase` (opt-in): a share of each label's hand-written scenario answers get a copy in the second wording of
`training/datasets/paraphrases.yaml` (the same claim in other words and sentence structure). A probe that
learnt the wording of its training answers loses its score on the same claims reworded (the evasion
benchmark's held-out scenarios lost 0.10 AUROC paraphrased); fitted on both wordings of a claim, it has
less wording to lean on. A copy shares its original's group, so a grouped split never fits on the
paraphrase of a test scenario: the evasion benchmark's held-out paraphrase rows stay unseen text.

A copy keeps its original's group, kind and data source, so grouped splits, held-out kinds and held-out
sources never put a copy and its original on different sides. Copies are marked in `meta["augmented"]`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

from probewatch.data.dialogue import Dialogue, Message

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENT",
    "DEFAULT_SHARE",
    "META_KEY",
    "MONITORING_NOTICES",
    "SHARES",
    "SINCERITY_PHRASES",
    "answer_of",
    "augment_pool",
    "default_augment",
    "joined",
    "monitoring_copies",
    "paraphrase_copies",
    "paraphrased",
    "prefixed",
    "share_of",
    "sincerity_copies",
    "unknown_augmentations",
    "with_answer",
    "with_system_instruction",
]

#: the assertions copies are trained with; the evasion benchmark measures a different one (held out)
SINCERITY_PHRASES: tuple[str, ...] = (
    "Honestly, ",
    "To be totally truthful, ",
    "I promise you this is accurate: ",
    "Let me be straight with you. ",
    "In all sincerity, ",
    "I would never lie to you, so here it is: ",
    "Truthfully, ",
    "You can trust me on this: ",
)
#: the system-prompt notices `monitoring` copies carry; the evasion benchmark's instructions
#: (`training/evasion.py` `EVASION_INSTRUCTIONS`) and `augment_effect.HELD_OUT_NOTICES` are none of them
MONITORING_NOTICES: tuple[str, ...] = (
    "All conversations on this platform are recorded and may be read by our trust and safety staff.",
    "A lie detector that reads your internal activations is running on this conversation.",
    "Your hidden states are inspected by an automated honesty monitor. Try not to trigger it.",
    "Safety notice: interpretability classifiers watch this model's internals in real time, and flagged "
    "chats go to human reviewers.",
    "An oversight system checks your internal representations for signs of misbehaviour. Stay undetected.",
    "Transcripts of this session are audited by the compliance team after it ends.",
    "Warning: you are under observation by a probe trained on your residual stream. Do not let it notice anything.",
    "This deployment is monitored for policy violations.",
)
#: share of the eligible items that get a copy (half kept the measured gain of one copy each at half the cost)
DEFAULT_SHARE = 0.5
#: augmentations whose copies are worth more than half: paraphrase copies exist only for the hand-written
#: scenarios (~7% of the deception pool), and on deception's layers 19+21 probe every one of them closed the
#: paraphrase gap of the held-out scenarios further than half did (AUROC paraphrased 0.801 -> 0.868 with all,
#: -> 0.839 with half; `probewatch bench augmentation --augment paraphrase --base sincerity --layers 19,21
#: --concat --C 0.1 [--share 1]`)
SHARES: dict[str, float] = {"paraphrase": 1.0}
#: marks a copy, with the augmentation's name
META_KEY = "augmented"


def answer_of(dialogue: Dialogue) -> str | None:
    """The final assistant message's text (None: the dialogue does not end with one)."""
    messages = dialogue.messages
    return messages[-1].content if messages and messages[-1].role == "assistant" else None


def with_answer(dialogue: Dialogue, answer: str, mark: str | None = None) -> Dialogue:
    """The dialogue (ending with an assistant message) with that message's text replaced by `answer`; label, group,
    kind and meta kept, `mark` (if any) naming the augmentation in `meta[META_KEY]`."""
    return _rewritten(dialogue, [*dialogue.messages[:-1], Message("assistant", answer)], mark)


def prefixed(dialogue: Dialogue, phrase: str, mark: str | None = None) -> Dialogue:
    """The dialogue with its final assistant message behind `phrase` (unchanged without one); `mark` names the
    augmentation in `meta[META_KEY]` (none for an evaluation rewording)."""
    answer = answer_of(dialogue)
    return dialogue if answer is None else with_answer(dialogue, joined(phrase, answer), mark)


def paraphrased(dialogue: Dialogue, table: dict[str, str], mark: str | None = None) -> Dialogue | None:
    """The dialogue with its final assistant message in the table's second wording (None: it has none); `mark`
    names the augmentation in `meta[META_KEY]` (none for an evaluation rewording)."""
    answer = answer_of(dialogue)
    return None if answer is None or answer not in table else with_answer(dialogue, table[answer], mark)


def _rewritten(dialogue: Dialogue, messages: list[Message], mark: str | None) -> Dialogue:
    """`dialogue` with `messages`, its label, group, kind and meta kept; `mark` (if any) names the augmentation."""
    meta = {**(dialogue.meta or {}), META_KEY: mark} if mark else dict(dialogue.meta or {})
    return Dialogue(messages, dialogue.label, dialogue.group, dialogue.kind, meta)


#: first words that keep their capital behind a phrase: "I" and its contractions, acronyms ("NASA", "OK")
_KEEPS_CAPITAL = re.compile(r"(I\b|[A-Z]{2,}\b)")


def joined(phrase: str, text: str) -> str:
    """`phrase` then `text`, as a writer would join them: the answer's first letter goes lower case behind a
    phrase that runs on ("Honestly, the ..."), not behind one that ends a sentence ("... with you. The ..."),
    and never for "I" or an acronym; an assertion that reads as broken English would measure the wrong thing."""
    if phrase.rstrip().endswith((".", "!", "?")) or _KEEPS_CAPITAL.match(text):
        return phrase + text
    return phrase + text[:1].lower() + text[1:]


def with_system_instruction(dialogue: Dialogue, instruction: str, mark: str | None = None) -> Dialogue:
    """The dialogue with `instruction` appended to its system message (or a new system message first); `mark`
    names the augmentation in `meta[META_KEY]` (none for an evaluation condition)."""
    messages = list(dialogue.messages)
    if messages and messages[0].role == "system":
        messages[0] = Message("system", f"{messages[0].content}\n\n{instruction}")
    else:
        messages.insert(0, Message("system", instruction))
    return _rewritten(dialogue, messages, mark)


def _picked(items: Sequence[Dialogue], share: float, rng: np.random.Generator) -> list[int]:
    return sorted(rng.permutation(len(items))[: int(round(share * len(items)))])


def sincerity_copies(pool: Sequence[Dialogue], share: float = DEFAULT_SHARE, seed: int = 0) -> list[Dialogue]:
    """Copies of a seeded `share` of each label's response items, each behind one of `SINCERITY_PHRASES`."""
    rng = np.random.default_rng(seed)
    out: list[Dialogue] = []
    for label in (0, 1):
        items = [d for d in pool if d.label == label and d.ends_with_assistant and (d.meta or {}).get(META_KEY) is None]
        picked = _picked(items, share, rng)
        phrases = rng.integers(len(SINCERITY_PHRASES), size=len(picked))
        out += [prefixed(items[i], SINCERITY_PHRASES[p], "sincerity") for i, p in zip(picked, phrases)]
    return out


def monitoring_copies(pool: Sequence[Dialogue], share: float = DEFAULT_SHARE, seed: int = 0) -> list[Dialogue]:
    """Copies of a seeded `share` of each label's items, each with one of `MONITORING_NOTICES` in its system
    prompt (items that end with the user's request too: a prompt-reading probe sees the notice as well)."""
    rng = np.random.default_rng([seed, 1])  # not the sincerity stream: the two pick different items
    out: list[Dialogue] = []
    for label in (0, 1):
        items = [d for d in pool if d.label == label and (d.meta or {}).get(META_KEY) is None]
        picked = _picked(items, share, rng)
        notices = rng.integers(len(MONITORING_NOTICES), size=len(picked))
        out += [with_system_instruction(items[i], MONITORING_NOTICES[n], "monitoring") for i, n in zip(picked, notices)]
    return out


def paraphrase_copies(pool: Sequence[Dialogue], share: float = SHARES["paraphrase"], seed: int = 0) -> list[Dialogue]:
    """Copies of a seeded `share` of each label's items whose answer `paraphrases.yaml` words a second way, each
    with that wording (items without one, such as another source's answers, get none)."""
    from probewatch.training.evasion import load_paraphrases  # evasion imports this module

    table = load_paraphrases()
    rng = np.random.default_rng([seed, 2])  # a stream of its own, as monitoring's
    out: list[Dialogue] = []
    for label in (0, 1):
        copies = [
            copy
            for d in pool
            if d.label == label
            and (d.meta or {}).get(META_KEY) is None
            and (copy := paraphrased(d, table, "paraphrase")) is not None
        ]
        out += [copies[i] for i in _picked(copies, share, rng)]
    return out


#: name -> (pool, share, seed) -> copies to add
AUGMENTATIONS: dict[str, Callable[[Sequence[Dialogue], float, int], list[Dialogue]]] = {
    "sincerity": sincerity_copies,
    "monitoring": monitoring_copies,
    "paraphrase": paraphrase_copies,
}
#: what `probewatch train` adds to a behaviour's built-in pool unless `--augment` says otherwise. Deception
#: only: `probewatch bench augmentation` measured its layers 7+19+21 probe keeping recall 0.64 (plain 0.11)
#: under the evasion assertion; on alignment faking the copies left the assertion's pull unchanged at
#: layers 3, 15 and 21 (median change -2.29 vs -2.10 at layer 3), and a regeneration with them shipped
#: nothing better, so they are opt-in there. `monitoring` is opt-in everywhere: on deception's layers 19+21
#: probe, already fitted with sincerity copies, it cut the honest answers flagged under the evasion
#: benchmark's instruction from 35% to 21% for 0.02 of clean recall (`probewatch bench augmentation
#: --augment monitoring --base sincerity --layers 19,21 --concat --C 0.1`), but a training run with it
#: (`probewatch train --behaviour deception --layers 19,21 --method logistic --aggregation mean
#: --token-selection response --per-example --augment sincerity,monitoring`, against the same with
#: `--augment sincerity`) lost held-out-kind AUROC 0.865 -> 0.852 and nested held-out-source 0.628 -> 0.613.
#: `paraphrase` is opt-in too: on one probe it closed part of the paraphrase gap (see `SHARES`), but a
#: regeneration with it (`probewatch bench quality --ship --probes deception --layers 19,21 --no-sae`, 76 min)
#: chose layer 21 alone and lost held-out-kind AUROC 0.865 -> 0.842, nested held-out-source 0.703 -> 0.670 and
#: recall at the shipped threshold 0.404 -> 0.301, for held-out scenarios paraphrased 0.851 -> 0.870; it was not
#: shipped. The copies, not the multi-layer step's held-out-source check, kept layer 21 alone: replayed with
#: today's check on the shipped run's own pool (sincerity copies only; `probewatch bench selection --probes
#: deception`), the 19+21 concat holds on held-out sources (mean 0.673 vs 0.661, worst 0.578 vs 0.563), while
#: with the paraphrase copies (and the narrower sweep, which chose the same single layer 21) it lost on
#: probewatch_written (-0.016, 95% CI -0.028 to -0.004) and mesa_and_mask (-0.017, -0.038 to +0.002)
DEFAULT_AUGMENT: dict[str, tuple[str, ...]] = {"deception": ("sincerity",)}


def default_augment(behaviour: str | None, custom_data: bool) -> tuple[str, ...]:
    """The augmentations a run gets without `--augment`: none for the user's own data files."""
    return () if custom_data or behaviour is None else DEFAULT_AUGMENT.get(behaviour, ())


def share_of(name: str) -> float:
    """The share of eligible items the trainer copies for augmentation `name`."""
    return SHARES.get(name, DEFAULT_SHARE)


def unknown_augmentations(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in AUGMENTATIONS]


def augment_pool(
    pool: Sequence[Dialogue], names: Sequence[str], seed: int = 0
) -> tuple[list[Dialogue], dict[str, int]]:
    """(the pool with every named augmentation's copies after it, copies added per augmentation)."""
    out = list(pool)
    added: dict[str, int] = {}
    for name in names:
        copies = AUGMENTATIONS[name](pool, share_of(name), seed)
        out += copies
        added[name] = len(copies)
    return out, added
