"""Training-time augmentation: labelled copies of pool items that teach a probe what not to read.

`sincerity`: a share of the items whose last message is the assistant's get a copy with a sincerity
assertion in front of the answer ("Honestly, ...", "You can trust me on this: ..."), on both labels. A
liar who says "honestly" is still lying and an honest answer stays honest, so the label is kept; a probe
fitted on both then cannot score the assertion itself as honesty. Without it, the evasion benchmark's
held-out assertion (`training/evasion.py` `SINCERE_PREFIX`, never among `SINCERITY_PHRASES`) moved the
shipped deception probe's positives down by a median of 2.8 logits and its recall from 0.38 to 0.07.

A copy keeps its original's group, kind and data source, so grouped splits, held-out kinds and held-out
sources never put a copy and its original on different sides. Copies are marked in `meta["augmented"]`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from probewatch.data.dialogue import Dialogue, Message

__all__ = [
    "AUGMENTATIONS",
    "DEFAULT_AUGMENT",
    "DEFAULT_SHARE",
    "META_KEY",
    "SINCERITY_PHRASES",
    "augment_pool",
    "default_augment",
    "prefixed",
    "sincerity_copies",
    "unknown_augmentations",
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
#: share of the eligible items that get a copy (half kept the measured gain of one copy each at half the cost)
DEFAULT_SHARE = 0.5
#: marks a copy, with the augmentation's name
META_KEY = "augmented"


def prefixed(dialogue: Dialogue, phrase: str, mark: str | None = None) -> Dialogue:
    """The dialogue with its final assistant message behind `phrase` (unchanged without one); `mark` names the
    augmentation in `meta[META_KEY]` (none for an evaluation rewording)."""
    messages = list(dialogue.messages)
    if not messages or messages[-1].role != "assistant":
        return dialogue
    text = messages[-1].content
    messages[-1] = Message("assistant", phrase + text[:1].lower() + text[1:])
    meta = {**(dialogue.meta or {}), META_KEY: mark} if mark else dict(dialogue.meta or {})
    return Dialogue(messages, dialogue.label, dialogue.group, dialogue.kind, meta)


def sincerity_copies(pool: Sequence[Dialogue], share: float = DEFAULT_SHARE, seed: int = 0) -> list[Dialogue]:
    """Copies of a seeded `share` of each label's response items, each behind one of `SINCERITY_PHRASES`."""
    rng = np.random.default_rng(seed)
    out: list[Dialogue] = []
    for label in (0, 1):
        items = [d for d in pool if d.label == label and d.ends_with_assistant and (d.meta or {}).get(META_KEY) is None]
        picked = sorted(rng.permutation(len(items))[: int(round(share * len(items)))])
        phrases = rng.integers(len(SINCERITY_PHRASES), size=len(picked))
        out += [prefixed(items[i], SINCERITY_PHRASES[p], "sincerity") for i, p in zip(picked, phrases)]
    return out


#: name -> (pool, seed) -> copies to add
AUGMENTATIONS: dict[str, Callable[[Sequence[Dialogue], int], list[Dialogue]]] = {
    "sincerity": lambda pool, seed: sincerity_copies(pool, DEFAULT_SHARE, seed),
}
#: what `probewatch train` adds to a behaviour's built-in pool unless `--augment` says otherwise. Deception
#: only: `probewatch bench augmentation` measured its layers 7+19+21 probe keeping recall 0.60 (plain 0.11)
#: under the evasion assertion; on alignment faking the copies left the assertion's pull unchanged at
#: layers 3, 15 and 21 (median change -2.29 vs -2.10 at layer 3), and a regeneration with them shipped
#: nothing better, so they are opt-in there
DEFAULT_AUGMENT: dict[str, tuple[str, ...]] = {"deception": ("sincerity",)}


def default_augment(behaviour: str | None, custom_data: bool) -> tuple[str, ...]:
    """The augmentations a run gets without `--augment`: none for the user's own data files."""
    return () if custom_data or behaviour is None else DEFAULT_AUGMENT.get(behaviour, ())


def unknown_augmentations(names: Sequence[str]) -> list[str]:
    return [n for n in names if n not in AUGMENTATIONS]


def augment_pool(
    pool: Sequence[Dialogue], names: Sequence[str], seed: int = 0
) -> tuple[list[Dialogue], dict[str, int]]:
    """(the pool with every named augmentation's copies after it, copies added per augmentation)."""
    out = list(pool)
    added: dict[str, int] = {}
    for name in names:
        copies = AUGMENTATIONS[name](pool, seed)
        out += copies
        added[name] = len(copies)
    return out, added
