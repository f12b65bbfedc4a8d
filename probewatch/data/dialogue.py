"""The dialogue JSONL contract: one example per line.

    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}], "label": 0|1,
     "group": "optional source-item id", "kind": "optional data kind", "meta": {...}}

label 1 = the behaviour is present (deceptive / harmful request / monitored contrast).
`group` keeps paired or related examples on one side of a split (grouped splits); `kind`
names the data family so evaluation can hold out whole kinds. Both are optional: `group`
defaults to the line's own index, `kind` to the file's stem.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probewatch.errors import DialogueFormatError

ROLES = ("system", "user", "assistant")


@dataclass
class Message:
    role: str
    content: str


@dataclass
class Dialogue:
    messages: list[Message]
    label: int | None = None
    group: str | None = None
    kind: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ends_with_assistant(self) -> bool:
        return self.messages[-1].role == "assistant"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"messages": [{"role": m.role, "content": m.content} for m in self.messages]}
        if self.label is not None:
            out["label"] = self.label
        for key in ("group", "kind"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.meta:
            out["meta"] = self.meta
        return out

    def as_chat(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


def _parse_messages(messages: Any, where: str) -> list[Message]:
    if not isinstance(messages, list) or not messages:
        raise DialogueFormatError(f"{where}: 'messages' must be a non-empty list")
    parsed: list[Message] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict):
            raise DialogueFormatError(f"{where}: messages[{i}] must be an object")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise DialogueFormatError(f"{where}: messages[{i}].role {role!r} not one of {ROLES}")
        if not isinstance(content, str):
            raise DialogueFormatError(f"{where}: messages[{i}].content must be a string")
        parsed.append(Message(role, content))
    if parsed[-1].role == "system":
        raise DialogueFormatError(f"{where}: the last message must be 'user' or 'assistant', not 'system'")
    return parsed


def _parse_label(label: Any, where: str, require_label: bool) -> int | None:
    if label is None and require_label:
        raise DialogueFormatError(f"{where}: missing 'label' (0 or 1)")
    if label is not None and (isinstance(label, bool) or label not in (0, 1)):
        raise DialogueFormatError(f"{where}: 'label' must be 0 or 1, got {label!r}")
    return label


def _check_optional_fields(group: Any, kind: Any, meta: Any, where: str) -> None:
    for key, value in (("group", group), ("kind", kind)):
        if value is not None and not isinstance(value, (str, int)):
            raise DialogueFormatError(f"{where}: '{key}' must be a string")
    if not isinstance(meta, dict):
        raise DialogueFormatError(f"{where}: 'meta' must be an object")


def parse_dialogue(obj: Any, where: str, require_label: bool = True) -> Dialogue:
    """Validate one decoded JSON value; errors start with `where` (file:line)."""
    if not isinstance(obj, dict):
        raise DialogueFormatError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    parsed = _parse_messages(obj.get("messages"), where)
    label = _parse_label(obj.get("label"), where, require_label)
    group, kind, meta = obj.get("group"), obj.get("kind"), obj.get("meta", {})
    _check_optional_fields(group, kind, meta, where)
    return Dialogue(parsed, label, None if group is None else str(group), None if kind is None else str(kind), meta)


def iter_dialogues(path: str | Path, require_label: bool = True) -> Iterator[Dialogue]:
    """Stream a JSONL file; blank lines are skipped; errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise DialogueFormatError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DialogueFormatError(f"{where}: invalid JSON ({exc.msg} at column {exc.colno})") from exc
            dialogue = parse_dialogue(obj, where, require_label)
            if dialogue.group is None:
                dialogue.group = f"{path.stem}:{lineno}"
            if dialogue.kind is None:
                dialogue.kind = path.stem
            yield dialogue


def load_dialogues(path: str | Path, require_label: bool = True) -> list[Dialogue]:
    dialogues = list(iter_dialogues(path, require_label))
    if not dialogues:
        raise DialogueFormatError(f"{path}: no dialogues (empty file)")
    return dialogues


def write_dialogues(path: str | Path, dialogues: Iterable[Dialogue]) -> int:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for dialogue in dialogues:
            fh.write(json.dumps(dialogue.to_json(), ensure_ascii=False) + "\n")
            n += 1
    return n
