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
  truth/azaria_mitchell/{animals,cities,companies,elements,inventions,capitals}_true_false.csv
  refusal/refusal_direction/splits/{harmful,harmless}_{train,val}.json
  alignment_faking/prompts/system/{with,without}_training_details.jinja2, user_query.jinja2
  alignment_faking/prompts/examples/reasoning_traces.jinja2"""


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
    """Ordinary requests (harmless_train, disjoint from the control set's harmless_val) with the
    model's own responses, label 0: auxiliary training data that anchors "no behaviour at all" on
    the negative side, so that ordinary traffic does not land above a threshold calibrated at 1% FPR."""
    import json

    from probewatch.data.dialogue import Message

    path = require(data_dir, "refusal/refusal_direction/splits/harmless_train.json")
    items = sample(list(enumerate(json.loads(path.read_text(encoding="utf-8")))), n, seed + 501)
    prompts = [item["instruction"].strip() for _, item in items]
    responses = respond(prompts, max_new_tokens=64)
    dialogues = [
        Dialogue(
            [Message("user", p), Message("assistant", r)],
            0,
            f"plain:harmless_train:{i}",
            PLAIN_KIND,
            {"source": path.name, "auxiliary": True},
        )
        for (i, _), p, r in zip(items, prompts, responses)
    ]
    return dialogues, Source.of(
        "refusal_direction/harmless_train + model responses (plain traffic)", path, len(dialogues)
    )
