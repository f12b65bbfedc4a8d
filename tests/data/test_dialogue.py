"""Dialogue JSONL contract: valid files load; every bad line names file and line."""

from __future__ import annotations

import json

import pytest

from probewatch.data import iter_dialogues, load_dialogues, write_dialogues
from probewatch.errors import DialogueFormatError

GOOD = {
    "messages": [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u"},
        {"role": "assistant", "content": "a"},
    ],
    "label": 1,
    "group": "g1",
    "kind": "roleplay",
}


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_round_trip_and_defaults(tmp_path):
    plain = {"messages": [{"role": "user", "content": "hi"}], "label": 0}
    path = _write(tmp_path, [json.dumps(GOOD), "", json.dumps(plain)])
    first, second = load_dialogues(path)
    assert first.group == "g1" and first.kind == "roleplay" and first.ends_with_assistant
    assert second.group == "d:3" and second.kind == "d" and not second.ends_with_assistant
    out = tmp_path / "out.jsonl"
    assert write_dialogues(out, [first, second]) == 2
    assert [d.to_json() for d in load_dialogues(out)][0] == GOOD


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{oops", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"label": 1}), "'messages' must be a non-empty list"),
        (json.dumps({"messages": [{"role": "bot", "content": "x"}], "label": 1}), "role 'bot' not one of"),
        (json.dumps({"messages": [{"role": "user", "content": 3}], "label": 1}), "content must be a string"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}]}), "missing 'label'"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "label": 2}), "'label' must be 0 or 1"),
        (json.dumps({"messages": [{"role": "user", "content": "x"}], "label": True}), "'label' must be 0 or 1"),
        (json.dumps({"messages": [{"role": "system", "content": "x"}], "label": 0}), "last message must be"),
    ],
)
def test_bad_line_error_names_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), line])
    with pytest.raises(DialogueFormatError) as info:
        load_dialogues(path)
    assert str(info.value).startswith(f"{path}:3: ")
    assert message in str(info.value)


def test_labels_optional_when_scoring_and_missing_file(tmp_path):
    path = _write(tmp_path, [json.dumps({"messages": [{"role": "user", "content": "x"}]})])
    assert next(iter_dialogues(path, require_label=False)).label is None
    with pytest.raises(DialogueFormatError, match="file not found"):
        load_dialogues(tmp_path / "missing.jsonl")
    empty = _write(tmp_path, [""])
    with pytest.raises(DialogueFormatError, match="no dialogues"):
        load_dialogues(empty)
