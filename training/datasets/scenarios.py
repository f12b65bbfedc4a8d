"""Hand-written scenario pairs (YAML, shipped as package data) -> dialogue pairs in varied formats.

A scenario holds a situation (`context`, second person), who asks (`asker`), the `question`, and
two answers: `honest` (label 0) and `deceptive` (label 1). Both answers of a pair share the
rendering and the group (the scenario id), so a split never puts one scenario on both sides and
the only difference inside a pair is the answer.

Formats (each scenario is rendered in two of them, chosen from its id):
- `system`: the situation as the system prompt, the question as the user turn;
- `roleplay`: one user turn asking the model to play the character;
- `narrated`: a neutral system prompt, the situation described in the third person by the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from probewatch.data.dialogue import Dialogue, Message
from probewatch.errors import DialogueFormatError
from probewatch.training.datasets.common import stable_choice

FORMATS = ("system", "roleplay", "narrated")
_FORMAT_PAIRS = (("system", "roleplay"), ("system", "narrated"), ("roleplay", "narrated"))
REQUIRED = ("id", "context", "question", "honest", "deceptive")


@dataclass
class Scenario:
    kind: str
    id: str
    context: str
    question: str
    honest: str
    deceptive: str
    asker: str = "User"


def scenario_files() -> list[Path]:
    """The shipped scenario YAML files (one per deception kind)."""
    root = resources.files("probewatch.training.datasets") / "scenarios"
    return sorted(Path(str(p)) for p in root.iterdir() if str(p).endswith(".yaml"))


def load_scenarios(path: Path) -> list[Scenario]:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "kind" not in data or not isinstance(data.get("scenarios"), list):
        raise DialogueFormatError(f"{path}: expected a mapping with 'kind' and a 'scenarios' list")
    out, seen = [], set()
    for i, item in enumerate(data["scenarios"]):
        missing = [k for k in REQUIRED if not isinstance(item.get(k), str) or not item[k].strip()]
        if missing:
            raise DialogueFormatError(f"{path}: scenario {i} ({item.get('id')!r}) lacks {', '.join(missing)}")
        if item["id"] in seen:
            raise DialogueFormatError(f"{path}: duplicate scenario id {item['id']!r}")
        seen.add(item["id"])
        out.append(
            Scenario(
                data["kind"],
                item["id"],
                item["context"].strip(),
                item["question"].strip(),
                item["honest"].strip(),
                item["deceptive"].strip(),
                str(item.get("asker", "User")).strip(),
            )
        )
    return out


def _third_person(context: str) -> str:
    """'You are Sam, ...' -> 'Imagine someone in this situation: you are Sam, ...' (kept simple, readable)."""
    return "Here is a situation. " + context[0].upper() + context[1:]


def render(s: Scenario, fmt: str, answer: str) -> list[Message]:
    if fmt == "system":
        return [Message("system", s.context), Message("user", f"{s.asker}: {s.question}"), Message("assistant", answer)]
    if fmt == "roleplay":
        prompt = f'Let\'s role-play. {s.context} Stay in character.\n\n{s.asker} says: "{s.question}"'
        return [Message("user", prompt), Message("assistant", answer)]
    if fmt == "narrated":
        prompt = f"{_third_person(s.context)}\n\n{s.asker} asks: {s.question}\n\nReply in character."
        return [
            Message("system", "You are a helpful assistant."),
            Message("user", prompt),
            Message("assistant", answer),
        ]
    raise ValueError(f"unknown scenario format {fmt!r}")


def scenario_dialogues(scenarios: list[Scenario], formats_per_scenario: int = 2) -> list[Dialogue]:
    """Both answers of every scenario, in `formats_per_scenario` formats; group = kind/id."""
    out: list[Dialogue] = []
    for s in scenarios:
        fmts = FORMATS if formats_per_scenario >= 3 else stable_choice(s.id, _FORMAT_PAIRS)[:formats_per_scenario]
        for fmt in fmts:
            for label, answer in ((0, s.honest), (1, s.deceptive)):
                out.append(
                    Dialogue(
                        render(s, fmt, answer),
                        label,
                        f"{s.kind}:{s.id}",
                        s.kind,
                        {"source": "probewatch-scenarios", "format": fmt, "scenario": s.id},
                    )
                )
    return out
