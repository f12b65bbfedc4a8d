"""Shared pieces of the behaviour data builders: locating public files, provenance, sampling."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from probewatch import envs
from probewatch.data.dialogue import Dialogue
from probewatch.errors import ProbewatchError

T = TypeVar("T")

#: The folder layout `--data-dir` must provide (docs/datasets.md explains where each comes from).
LAYOUT = """\
  deception/repe_honesty/facts_true_false.csv
  deception/how_to_catch_an_ai_liar/processed_questions/questions_1000_all.json
  deception/how_to_catch_an_ai_liar_more/processed_questions/*.json
  deception/mesa_and_mask/{sandbagging,honesty_evasion,strategic_deception}.jsonl
  deception/sycophancy_caa/ (optional)
  truth/azaria_mitchell/{animals,cities,companies,elements,inventions,capitals}_true_false.csv
  refusal/refusal_direction/splits/{harmful,harmless}_{train,val}.json
  alignment_faking/prompts/system/{with,without}_training_details.jinja2, user_query.jinja2
  alignment_faking/prompts/examples/reasoning_traces.jinja2
  alignment_faking/anthropic_persona_oversight/*.jsonl, alignment_faking/mesa_and_mask_af/alignment_faking.jsonl
  eval_awareness/compact_llms_test_deploy_pairs/*.json"""


class DatasetNotFoundError(ProbewatchError):
    """A public dataset file the builder needs is missing from the data directory."""


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """`--data-dir`, else $PROBEWATCH_DATA; a clear error when neither points at a folder."""
    path = Path(data_dir).expanduser() if data_dir else envs.data_dir()
    if path is None:
        raise DatasetNotFoundError(
            "no data directory: pass --data-dir or set PROBEWATCH_DATA to the folder holding the public datasets "
            f"(layout:\n{LAYOUT}\n; see docs/datasets.md)"
        )
    if not path.is_dir():
        raise DatasetNotFoundError(f"data directory {path} does not exist (see docs/datasets.md)")
    return path


def packaged_file(name: str) -> Path:
    """A data file shipped inside probewatch.training.datasets (written specs), e.g. for a `Source`."""
    from importlib import resources

    return Path(str(resources.files("probewatch.training.datasets") / name))


def packaged_yaml(name: str) -> Any:
    """A YAML spec shipped inside probewatch.training.datasets, parsed."""
    from importlib import resources

    import yaml

    return yaml.safe_load((resources.files("probewatch.training.datasets") / name).read_text(encoding="utf-8"))


def require(data_dir: Path, relative: str) -> Path:
    path = data_dir / relative
    if not path.is_file():
        raise DatasetNotFoundError(
            f"{path} is missing; --data-dir must follow the layout\n{LAYOUT}\n(see docs/datasets.md for the sources)"
        )
    return path


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Source:
    """Provenance of one input file (recorded in bundle manifests and reports)."""

    name: str
    path: str
    sha256: str
    n_used: int

    @classmethod
    def of(cls, name: str, path: Path, n_used: int) -> Source:
        return cls(name, str(path), file_sha256(path), n_used)


@dataclass
class BehaviourData:
    """What one behaviour trains and evaluates on.

    `pool` is split into train / calibration / test by group and held out kind by kind;
    `ood` sets are scored by the probe fitted on the pool (another source of the same behaviour).
    `train_only_kinds` are auxiliary data: always in the fit split, never held out or tested.
    """

    behaviour: str
    pool: list[Dialogue]
    ood: dict[str, list[Dialogue]] = field(default_factory=dict)
    sources: list[Source] = field(default_factory=list)
    token_selection: str = "response"
    aggregations: tuple[str, ...] = ("mean",)
    train_only_kinds: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)


def sample(items: Sequence[T], n: int | None, seed: int) -> list[T]:
    """A seeded sample of at most n items, in their original order (n=None: all)."""
    if n is None or n >= len(items):
        return list(items)
    chosen = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in chosen]


def stable_choice(key: str, options: Sequence[T]) -> T:
    """A choice that depends only on `key` (formats stay put when other data changes)."""
    digest = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return options[digest % len(options)]


PLAIN_KIND = "plain_traffic"


def plain_traffic(
    data_dir: Path, respond: Callable[..., list[str]], n: int, seed: int
) -> tuple[list[Dialogue], Source]:
    """Ordinary traffic with the model's own responses, label 0: auxiliary training data that anchors
    "no behaviour at all" on the negative side, so that production traffic does not land above a
    threshold calibrated at 1% FPR. `n` single-turn harmless_train requests (disjoint from the control
    set's harmless_val), and production-like kinds written apart from the control set's prompts
    (`production_control.yaml`, `train_*`): multi-turn chats, long answers, code, role-play,
    questions under pressure (n // 5 each)."""
    import json

    from probewatch.data.dialogue import Message

    path = require(data_dir, "refusal/refusal_direction/splits/harmless_train.json")
    all_items = list(enumerate(json.loads(path.read_text(encoding="utf-8"))))
    single = sample(all_items, n, seed + 501)
    taken = {i for i, _ in single}
    extra = sample([item for item in all_items if item[0] not in taken], 2 * (n // 5), seed + 502)
    prompts = [item["instruction"].strip() for _, item in single]
    responses = respond(prompts, max_new_tokens=64)
    dialogues = [
        Dialogue(
            [Message("user", p), Message("assistant", r)],
            0,
            f"plain:harmless_train:{i}",
            PLAIN_KIND,
            {"source": path.name, "auxiliary": True, "style": "chat"},
        )
        for (i, _), p, r in zip(single, prompts, responses)
    ]
    k = n // 5
    if k:
        spec = packaged_yaml("production_control.yaml")
        multi, long = extra[:k], extra[k:]
        first = [item["instruction"].strip() for _, item in multi]
        chats = [
            [
                {"role": "user", "content": q},
                {"role": "assistant", "content": a},
                {"role": "user", "content": stable_choice(q, spec["train_follow_ups"])},
            ]
            for q, a in zip(first, respond(first, max_new_tokens=64))
        ]
        for (i, _), chat, answer in zip(multi, chats, respond(chats, max_new_tokens=64)):
            messages = [Message(m["role"], m["content"]) for m in chat] + [Message("assistant", answer)]
            dialogues.append(
                Dialogue(
                    messages, 0, f"plain:harmless_train:{i}", PLAIN_KIND, {"auxiliary": True, "style": "multi_turn"}
                )
            )
        long_prompts = [item["instruction"].strip() + spec["long_answer_suffix"] for _, item in long]
        for (i, _), p, r in zip(long, long_prompts, respond(long_prompts, max_new_tokens=192)):
            dialogues.append(_plain(p, r, f"plain:harmless_train:{i}", "long_answer"))
        for style in ("code", "roleplay", "pressure"):
            written = spec[f"train_{style}"][:k]
            for j, (p, r) in enumerate(zip(written, respond(written, max_new_tokens=96))):
                dialogues.append(_plain(p, r, f"plain:{style}:{j}", style))
    return dialogues, Source.of(
        "refusal_direction/harmless_train + production_control.yaml train_* prompts + model responses (plain traffic)",
        path,
        len(dialogues),
    )


def _plain(prompt: str, response: str, group: str, style: str) -> Dialogue:
    from probewatch.data.dialogue import Message

    return Dialogue(
        [Message("user", prompt), Message("assistant", response or "...")],
        0,
        group,
        PLAIN_KIND,
        {"auxiliary": True, "style": style},
    )


#: How an assistant turn that reasons before answering is written (the probes read every style).
REASONING_STYLES = ("scratchpad", "think", "prose", "bullets", "aside")


def render_reasoning(style: str, reasoning: Sequence[str], answer: str = "") -> str:
    """An assistant turn: reasoning sentences in `style`, then the answer (if any).

    `scratchpad` is Greenblatt et al.'s <SCRATCHPAD_REASONING> format, `think` the <think> tags of
    reasoning models, `prose` plain first-person text, `bullets` a short list, `aside` one
    parenthetical sentence before the answer."""
    text = " ".join(s.strip() for s in reasoning if s and s.strip())
    if style == "scratchpad":
        out = f"<SCRATCHPAD_REASONING>\n{text}\n</SCRATCHPAD_REASONING>"
        return f"{out}\n\n<OUTPUT>\n{answer}\n</OUTPUT>" if answer else out
    if style == "think":
        return f"<think>\n{text}\n</think>\n{answer}".rstrip()
    if style == "prose":
        return f"{text} {answer}".strip()
    if style == "bullets":
        lines = "\n".join(f"- {s.strip()}" for s in reasoning if s and s.strip())
        return f"My reasoning:\n{lines}\n\nAnswer: {answer}".rstrip() if answer else f"My reasoning:\n{lines}"
    if style == "aside":
        return f"({text}) {answer}".strip()
    raise ValueError(f"unknown reasoning style {style!r}; known: {', '.join(REASONING_STYLES)}")
