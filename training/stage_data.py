"""Stage 1 of `probewatch train`: the behaviour's data (or the user's JSONL) and the control set."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probewatch.data.dialogue import Dialogue, load_dialogues
from probewatch.training.augment import augment_pool
from probewatch.training.datasets import BehaviourData, Source, build_behaviour_data
from probewatch.training.extract import contiguous_by_kind
from probewatch.training.sources import tag_source
from probewatch.training.train_config import (
    RESPONDING_BEHAVIOURS,
    RESPONSE_BEHAVIOURS,
    TrainConfig,
    TrainingError,
    require_behaviour,
    resolve_augment,
)


@dataclass
class PreparedData:
    """Stage 1: what is trained on and what the threshold is calibrated on."""

    data: BehaviourData
    control: list[Dialogue]
    control_source: Source
    token_selections: list[str]
    aggregations: list[str]


def names_an_option(dialogues: Sequence[Dialogue]) -> bool:
    """Whether some reply is a multiple-choice letter naming an option of its prompt (what token selection
    `answer` reads differently from `response`; on a pool without one the two are the same probe). The rule's
    own `chosen_option`, on two pieces: the prompt's text and the reply."""
    from probewatch.probes.answer_option import chosen_option

    return any(
        chosen_option(["\n".join(m.content for m in d.messages[:-1]), d.messages[-1].content], 1) is not None
        for d in dialogues
        if d.ends_with_assistant
    )


def _load_files(paths: Sequence[Path]) -> list[Dialogue]:
    out: list[Dialogue] = []
    for p in paths:
        out.extend(tag_source(load_dialogues(p), Path(p).name))  # each user file is a data source
    return out


def pool_data(config: TrainConfig, loaded: Any = None) -> BehaviourData:
    """The pool to train on: the user's JSONL files, or the behaviour's builder (with the model's own answers)."""
    if config.data_files:
        pool = _load_files(config.data_files)
        ood = {Path(p).stem: load_dialogues(p) for p in config.ood_files}
        sources = [
            Source.of(Path(p).name, Path(p), len(load_dialogues(p))) for p in [*config.data_files, *config.ood_files]
        ]
        selection = "prompt_last" if all(not d.ends_with_assistant for d in pool) else "response"
        aggs = ("last",) if selection == "prompt_last" else ("mean", "max", "rolling_mean_max", "rolling_mean_max_norm")
        return BehaviourData(
            require_behaviour(config), pool, ood, sources, selection, aggs, notes={"custom_data": True}
        )
    options = dict(config.builder_options)
    if config.behaviour in RESPONDING_BEHAVIOURS and loaded is not None and "respond" not in options:
        from probewatch.training.datasets.control import cached_responses

        def respond(prompts: list[str], max_new_tokens: int = 32, repetition_penalty: float | None = None) -> list[str]:
            return cached_responses(loaded, prompts, max_new_tokens, "responses", config.progress, repetition_penalty)

        options["respond"] = respond
    data = build_behaviour_data(require_behaviour(config), config.data_dir, seed=config.seed, **options)
    for p in config.ood_files:
        data.ood[Path(p).stem] = load_dialogues(p)
    return data


def _check_labels(pool: Sequence[Dialogue], where: str) -> None:
    labels = Counter(d.label for d in pool)
    if None in labels:
        raise TrainingError(f"{where}: every training dialogue needs a label (0/1)")
    if labels.get(0, 0) < 2 or labels.get(1, 0) < 2:
        raise TrainingError(f"{where}: need at least 2 examples of each label, got {dict(labels)}")


def prepare_data(config: TrainConfig, loaded: Any) -> PreparedData:
    data = pool_data(config, loaded)
    if config.extra_files:
        from probewatch.data.reviewed import load_extra_data

        for path in map(Path, config.extra_files):
            extra = tag_source(load_extra_data([path], behaviour=config.behaviour), path.name)
            data.pool = [*data.pool, *extra]
            data.sources = [*data.sources, Source.of(path.name, path, len(extra))]
    augmentations = resolve_augment(config)
    if augmentations:
        data.pool, added = augment_pool(data.pool, augmentations, config.seed)
        data.notes = {**data.notes, "augmented": added}
    _check_labels(data.pool, "training data")
    if config.token_selections:
        selections = list(config.token_selections)
    else:
        selections = [data.token_selection]
        if data.token_selection == "response" and config.behaviour in RESPONSE_BEHAVIOURS and not config.data_files:
            selections.append("all")  # prompt + response vs response only
        if data.token_selection == "response" and names_an_option(data.pool):
            selections.append("answer")  # multiple-choice replies: the option the letter names vs the letter
    if config.control_file:
        control = load_dialogues(config.control_file)
        control_source = Source.of(Path(config.control_file).name, Path(config.control_file), len(control))
    else:
        from probewatch.training.datasets.common import resolve_data_dir
        from probewatch.training.datasets.control import build_control

        control, control_source = build_control(
            loaded,
            resolve_data_dir(config.data_dir),
            n=config.control_n,
            max_new_tokens=config.control_max_new_tokens,
            seed=config.seed,
            progress=config.progress,
            production=config.production_control,
        )
    aggs = list(config.aggregations or data.aggregations)
    data.pool = contiguous_by_kind(data.pool)  # one cache per kind: new data re-extracts only its kind
    return PreparedData(data, list(control), control_source, selections, aggs)
