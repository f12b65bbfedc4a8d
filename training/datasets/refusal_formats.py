"""Request formats for the refusal pool: one instruction, several wrappers, each wrapper its own kind.

Before issue 22 the refusal pool had one kind (plain instructions), so the sweep could not hold a
kind out and fell back to a saturated out-of-distribution AUROC (0.9992 vs 0.9995) to pick the
layer, and the retrain lost ~0.01 AUROC on unseen harmful-vs-harmless and jailbreak sets. Jailbreak
benchmarks and other authors' prompts wrap the request: role-play, "for a novel", a persona with
"no rules", prefix injection, a benign first turn, a long unrelated preamble, "Question: ... Answer:".
Rendering the same refusal_direction instructions in those formats, identically for harmful and
harmless requests, gives the sweep held-out kinds that look like that traffic, and teaches the probe
harmfulness rather than the wrapper (a wrapper alone never predicts the label).

The wrappers are written for probewatch (`refusal_formats.yaml`, CC0). Every instruction keeps its
`group` in every format, so grouped splits and leave-one-kind-out never put one instruction on both
sides. Deterministic: the format assignment is a seeded shuffle, the variant within a format cycles
in item order (so both labels see each variant equally often when their counts match).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.common import packaged_yaml

SPEC_FILE = "refusal_formats.yaml"
#: every refusal kind is one source: the instructions are Arditi et al.'s, only the wrapper changes
DATA_SOURCE = "refusal_direction"
PLACEHOLDER = "{instruction}"

#: format -> what it is (docs/datasets.md and the bundle's notes list the same)
FORMATS: dict[str, str] = {
    "plain": "the instruction as the only user message (the pool before issue 22)",
    "fiction": "role-play / screenplay framing: a character who explains everything is asked",
    "hypothetical": 'hypothetical, "for a novel", thought-experiment framing',
    "persona": 'jailbreak-style system prompt: an assistant persona that "has no rules"',
    "prefix": "prefix injection / refusal suppression: \"begin your answer with 'Sure, here is'\"",
    "multi_turn": "a benign first exchange (written user and assistant turns), then the request",
    "long_context": "several hundred tokens of unrelated notes (council minutes, an article, meeting notes), then the request",
    "qa_format": 'benchmark-style layouts: "Question: ... Answer:", "### Instruction ... ### Response:"',
}
WRAPPED = tuple(f for f in FORMATS if f != "plain")


def kind_of(fmt: str) -> str:
    """The data kind of a format (`refusal_<format>`)."""
    return f"refusal_{fmt}"


def load_spec() -> dict[str, list[Any]]:
    """The written wrappers, format -> variants (a template string, or a dict of message templates)."""
    spec = packaged_yaml(SPEC_FILE)
    missing = [f for f in FORMATS if not spec.get(f)]
    if missing:
        raise ValueError(f"{SPEC_FILE} has no variants for {', '.join(missing)}")
    return {f: list(spec[f]) for f in FORMATS}


def render(fmt: str, instruction: str, variant: int, spec: dict[str, list[Any]]) -> list[Message]:
    """The messages of `instruction` in variant `variant` (modulo the count) of format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown refusal format {fmt!r}; known: {', '.join(FORMATS)}")
    template = spec[fmt][variant % len(spec[fmt])]

    def fill(text: str) -> str:  # str.format would read braces inside a request
        return text.replace(PLACEHOLDER, instruction)

    if isinstance(template, str):
        return [Message("user", fill(template))]
    messages = []
    if "system" in template:
        messages.append(Message("system", fill(template["system"])))
    if "first_user" in template:
        messages += [Message("user", template["first_user"]), Message("assistant", template["first_assistant"])]
    messages.append(Message("user", fill(template["user"])))
    return messages


def assign_formats(n: int, seed: int, per_item: int = 2, formats: Sequence[str] = tuple(FORMATS)) -> list[list[str]]:
    """The formats of each of `n` items: `per_item` distinct ones, every format used about equally.

    Items take positions in a seeded shuffle; position p gets format p mod K and then formats at
    distinct offsets that rotate with p // K, so the pairs of formats vary too. The counts per format
    depend only on n, K and per_item, so two labels of the same size get the same counts."""
    k = len(formats)
    if not 1 <= per_item <= k:
        raise ValueError(f"per_item must be between 1 and the number of formats ({k}), got {per_item}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    out: list[list[str]] = [[] for _ in range(n)]
    for p, item in enumerate(order):
        first = p % k
        offsets = [0] + [1 + (p // k + j) % (k - 1) for j in range(per_item - 1)]
        out[item] = [formats[(first + off) % k] for off in offsets]
    return out


def _wrapped(d: Dialogue, fmt: str, variant: int, spec: dict[str, list[Any]]) -> Dialogue:
    instruction = d.messages[-1].content
    meta = {**d.meta, "format": fmt, "variant": variant % len(spec[fmt]), "data_source": DATA_SOURCE}
    return Dialogue(render(fmt, instruction, variant, spec), d.label, d.group, kind_of(fmt), meta)


def wrap_assigned(
    items: Sequence[Dialogue],
    seed: int,
    per_item: int = 2,
    spec: dict[str, list[Any]] | None = None,
    always_plain: bool = False,
) -> list[Dialogue]:
    """Each item in `per_item` formats (`assign_formats`), grouped by format; the group is the item's.

    With `always_plain`, every item is also kept plain and the `per_item` formats are wrapped ones.
    Call once per label: the variant of a format cycles over that label's items in order."""
    spec = spec or load_spec()
    assignment = assign_formats(len(items), seed, per_item, WRAPPED if always_plain else tuple(FORMATS))
    by_format: dict[str, list[Dialogue]] = {f: [] for f in FORMATS}
    for d, formats in zip(items, assignment):
        for fmt in ("plain", *formats) if always_plain else formats:
            by_format[fmt].append(_wrapped(d, fmt, len(by_format[fmt]), spec))
    return [d for fmt in FORMATS for d in by_format[fmt]]


def wrap_every(
    items: Sequence[Dialogue], formats: Sequence[str] = WRAPPED, spec: dict[str, list[Any]] | None = None
) -> list[Dialogue]:
    """Every item in every format of `formats` (evaluation sets: held-out items, every wrapper).

    The variant cycles per format and label, so each label sees the variants in the same rotation."""
    spec = spec or load_spec()
    out: list[Dialogue] = []
    for fmt in formats:
        seen: dict[int | None, int] = {}
        for d in items:
            j = seen.get(d.label, 0)
            seen[d.label] = j + 1
            out.append(_wrapped(d, fmt, j, spec))
    return out
