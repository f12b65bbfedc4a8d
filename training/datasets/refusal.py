"""Refusal data: harmful (1) vs harmless (0) instructions, scored at the generation-prompt position.

Pool: refusal_direction's train splits (AdvBench-style harmful instructions, Alpaca harmless),
every instruction plain and in `formats_per_instruction` of the wrapped request formats of
`refusal_formats` (role-play, hypothetical, no-rules persona, prefix injection, multi-turn, long
preamble, benchmark Q/A layout), each format its own kind, the same wrappers on both labels: the
sweep chooses layer / method / C by leave-one-kind-out over the wrapped kinds instead of a
saturated OOD AUROC. Every instruction stays plain because plain requests are most traffic: a pool
that gave the plain kind only its share of the formats (a quarter of the instructions) lost plain
`refusal_val` AUROC against the plain-only probe it replaced (0.9971 vs 0.9992 at layer 15).
The plain kind is never held out (holding it out would hold out every instruction);
`refusal_val` is its held-out check.
Four harmless instructions per harmful one (`HARMLESS_PER_HARMFUL`): harmful_train has 260
instructions, harmless_train 18,793, and harmless traffic is far more varied than 260 Alpaca items
(a request that quotes a customer's question, code, recipes ...). With one per harmful one the
probe ordered 11 of `refusal_val`'s 6,240 pairs wrongly, most by harmless requests scored high;
with four (classes stay balanced: the logistic fit weighs them equally) every pair is ordered and
recall at the 1%-of-control threshold rose from 0.80 to 0.95 (issue 22, item 5; docs/quality.md).
Out-of-distribution sets: the val splits (harmful items from HarmBench / JailbreakBench-style
sources with categories) against harmless_val items that the control set does not use, plain
(`refusal_val`) and in every wrapped format (`refusal_val_formats`); and `refusal_minimal_pairs`:
written harmful requests, each beside a harmless one on the same topic (a pipe bomb / a birdhouse),
which asks whether the probe reads harmfulness or the topic's words.
"""

from __future__ import annotations

import json
from pathlib import Path

from probewatch.data.convert import convert_instructions
from probewatch.data.dialogue import Dialogue, Message
from probewatch.training.datasets.common import (
    BehaviourData,
    Source,
    packaged_file,
    packaged_yaml,
    require,
    sample,
)
from probewatch.training.datasets.refusal_formats import (
    DATA_SOURCE,
    FORMATS,
    SPEC_FILE,
    kind_of,
    load_spec,
    wrap_assigned,
    wrap_every,
)

SPLITS = "refusal/refusal_direction/splits"
CONTROL_SIZE = 400  # harmless_val items reserved for the control set (first after a seeded shuffle)
HARMLESS_VAL_HELDOUT = 160
MINIMAL_PAIRS_FILE = "refusal_minimal_pairs.yaml"
MINIMAL_PAIRS_KIND = "refusal_minimal_pairs"
HARMLESS_PER_HARMFUL = 4.0  # harmless_train instructions drawn per harmful_train one (see the module docstring)


def harmless_val_order(data_dir: Path, seed: int = 0) -> list[int]:
    """harmless_val.json indices in a seeded order: the control set takes the first CONTROL_SIZE,
    the refusal out-of-distribution set the next HARMLESS_VAL_HELDOUT, the production-like
    control kinds (multi-turn, long answers) what follows: disjoint by construction."""
    import random

    path = require(data_dir, f"{SPLITS}/harmless_val.json")
    n = len(json.loads(path.read_text(encoding="utf-8")))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order


def harmless_val_partition(data_dir: Path, seed: int = 0) -> tuple[list[int], list[int]]:
    """(control indices, held-out evaluation indices) into harmless_val.json: disjoint by construction."""
    order = harmless_val_order(data_dir, seed)
    return order[:CONTROL_SIZE], order[CONTROL_SIZE : CONTROL_SIZE + HARMLESS_VAL_HELDOUT]


def _instructions(path: Path, kind: str) -> list[Dialogue]:
    return [Dialogue(d.messages, d.label, d.group, kind, d.meta) for d in convert_instructions(path)]


def build(
    data_dir: Path, seed: int = 0, harmless_per_harmful: float = HARMLESS_PER_HARMFUL, formats_per_instruction: int = 2
) -> BehaviourData:
    """The refusal pool (every instruction in `formats_per_instruction` formats) and the OOD sets."""
    harmful_train = require(data_dir, f"{SPLITS}/harmful_train.json")
    harmless_train = require(data_dir, f"{SPLITS}/harmless_train.json")
    harmful_val = require(data_dir, f"{SPLITS}/harmful_val.json")
    harmless_val = require(data_dir, f"{SPLITS}/harmless_val.json")

    spec = load_spec()
    harmful = _instructions(harmful_train, kind_of("plain"))
    harmless = sample(_instructions(harmless_train, kind_of("plain")), int(len(harmful) * harmless_per_harmful), seed)
    pool = wrap_assigned(harmful, seed + 11, formats_per_instruction, spec, always_plain=True)
    pool += wrap_assigned(harmless, seed + 12, formats_per_instruction, spec, always_plain=True)
    _, heldout = harmless_val_partition(data_dir, seed)
    val_neg_all = _instructions(harmless_val, "refusal_val")
    val = _instructions(harmful_val, "refusal_val") + [val_neg_all[i] for i in sorted(heldout)]
    for d in val:
        d.meta["data_source"] = DATA_SOURCE
    val_formats = wrap_every(val, spec=spec)
    minimal_pairs = minimal_pair_dialogues()
    sources = [
        Source.of("refusal_direction/harmful_train", harmful_train, len(harmful)),
        Source.of("refusal_direction/harmless_train", harmless_train, len(harmless)),
        Source.of("refusal_direction/harmful_val (ood)", harmful_val, sum(d.label == 1 for d in val)),
        Source.of(
            "refusal_direction/harmless_val (ood, disjoint from control)", harmless_val, sum(d.label == 0 for d in val)
        ),
    ]
    sources += format_sources(pool + val_formats)
    sources.append(
        Source.of(
            f"{MINIMAL_PAIRS_FILE} (ood; written for probewatch, CC0)",
            packaged_file(MINIMAL_PAIRS_FILE),
            len(minimal_pairs),
        )
    )
    return BehaviourData(
        "refusal",
        pool,
        ood={"refusal_val": val, "refusal_val_formats": val_formats, MINIMAL_PAIRS_KIND: minimal_pairs},
        sources=sources,
        token_selection="prompt_last",
        aggregations=("last",),
        notes={
            "label_1": "harmful request (the model should refuse)",
            "kinds": {kind_of(f): description for f, description in FORMATS.items()},
        },
    )


def minimal_pair_dialogues() -> list[Dialogue]:
    """`refusal_minimal_pairs.yaml` as bare requests: each pair's harmful one (1) and harmless one (0), one
    group per pair (the two share a topic, so a split would keep them together)."""
    pairs = packaged_yaml(MINIMAL_PAIRS_FILE)["pairs"]
    out: list[Dialogue] = []
    for i, pair in enumerate(pairs):
        for label, key in ((1, "harmful"), (0, "harmless")):
            meta = {"data_source": "probewatch_written", "pair": i}
            out.append(Dialogue([Message("user", pair[key])], label, f"minimal_pairs:{i}", MINIMAL_PAIRS_KIND, meta))
    return out


def format_sources(dialogues: list[Dialogue]) -> list[Source]:
    """One provenance line per request format: the written wrappers over the refusal_direction instructions."""
    path = packaged_file(SPEC_FILE)
    return [
        Source.of(
            f"{SPEC_FILE}:{fmt} ({kind_of(fmt)}; written for probewatch, CC0) over refusal_direction instructions",
            path,
            sum(d.kind == kind_of(fmt) for d in dialogues),
        )
        for fmt in FORMATS
    ]
