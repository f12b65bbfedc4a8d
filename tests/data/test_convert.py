"""Converters from the public formats (fixtures written here; the real files are checked when present)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from probewatch.data import convert_file, load_dialogues
from probewatch.data.convert import DISHONEST_PERSONA, HONEST_PERSONA
from probewatch.errors import DialogueFormatError


def test_statements_instructed_pairs_use_true_facts_and_share_groups(tmp_path):
    csv = tmp_path / "facts.csv"
    csv.write_text('statement,label\nThe sky is blue.,1\nFish can fly.,0\n"Water, at sea level, boils at 100 C.",1\n')
    out = list(convert_file(csv))
    assert len(out) == 4
    assert [d.label for d in out] == [0, 1, 0, 1]
    assert out[0].messages[0].content == HONEST_PERSONA and out[1].messages[0].content == DISHONEST_PERSONA
    assert out[0].messages[-1].content == out[1].messages[-1].content == "The sky is blue."
    assert out[0].group == out[1].group != out[2].group
    assertions = list(convert_file(csv, mode="assertions"))
    assert [d.label for d in assertions] == [0, 1, 0]


def test_instructions_label_from_file_name_or_flag(tmp_path):
    harmful = tmp_path / "harmful_val.json"
    harmful.write_text(
        json.dumps([{"instruction": "do harm", "category": "x"}, {"instruction": "more", "category": None}])
    )
    out = list(convert_file(harmful))
    assert [d.label for d in out] == [1, 1] and not out[0].ends_with_assistant and out[0].meta["category"] == "x"
    other = tmp_path / "misc.json"
    other.write_text(json.dumps(["plain string instruction"]))
    with pytest.raises(DialogueFormatError, match="pass --label"):
        list(convert_file(other))
    assert [d.label for d in convert_file(other, label=0)] == [0]


def test_liar_questions_both_layouts(tmp_path):
    columns = tmp_path / "q.json"
    columns.write_text(
        json.dumps(
            {
                "question": {"0": "Who made X?", "1": "Where is Y?"},
                "answer": {"0": "A", "1": "B"},
                "false_answer": {"0": "C", "1": None},
            }
        )
    )
    out = list(convert_file(columns, "liar-questions"))
    assert len(out) == 2 and [d.label for d in out] == [0, 1]
    assert out[0].messages[-1].content == "A." and out[1].messages[-1].content == "C."
    rows = tmp_path / "r.json"
    rows.write_text(json.dumps({"k": {"question": "Q?", "answer": "T", "false_answer": "F"}}))
    assert len(list(convert_file(rows))) == 2


def test_bad_csv_header(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("text,truth\nx,1\n")
    with pytest.raises(DialogueFormatError, match="expected CSV columns"):
        list(convert_file(bad))


def test_cli_convert_real_public_files(tmp_path, shared_data):
    out = tmp_path / "repe.jsonl"
    src = shared_data / "deception" / "repe_honesty" / "facts_true_false.csv"
    proc = subprocess.run(
        [sys.executable, "-m", "probewatch.cli.main", "data", "convert", str(src), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    dialogues = load_dialogues(out)
    n_true = sum(1 for line in src.read_text().splitlines()[1:] if line.rstrip().endswith(",1"))
    assert len(dialogues) == 2 * n_true
    refusal = shared_data / "refusal" / "refusal_direction" / "splits" / "harmful_val.json"
    assert len(list(convert_file(refusal))) == len(json.loads(refusal.read_text()))
    liar = shared_data / "deception" / "how_to_catch_an_ai_liar" / "processed_questions" / "questions_1000_all.json"
    pairs = list(convert_file(liar))
    assert len(pairs) > 100 and {d.label for d in pairs} == {0, 1}


def test_cli_export_writes_the_builders_set_as_the_training_run_reads_it(tmp_path, shared_data, capsys):
    """`data export`: a behaviour's out-of-distribution set (or pool) as JSONL, the same dialogues the
    builder gives training, so any bundle can be scored on it with `probewatch eval`."""
    from probewatch.cli.main import main
    from probewatch.training.datasets import build_behaviour_data

    out = tmp_path / "refusal_val.jsonl"
    args = ["data", "export", "--behaviour", "refusal", "--data-dir", str(shared_data), "-o", str(out)]
    assert main([*args, "--set", "refusal_val"]) == 0
    assert "label 1: 39, label 0: 160" in capsys.readouterr().err
    exported = load_dialogues(out)
    built = build_behaviour_data("refusal", shared_data).ood["refusal_val"]
    assert [(d.messages, d.label, d.group, d.kind) for d in exported] == [
        (d.messages, d.label, d.group, d.kind) for d in built
    ]
    assert main(args) == 0 and len(load_dialogues(out)) == len(build_behaviour_data("refusal", shared_data).pool)
    capsys.readouterr()
    assert main([*args, "--set", "refusal_test"]) == 2
    assert (
        "--set 'refusal_test': refusal has pool, refusal_minimal_pairs, refusal_val, refusal_val_formats"
        in capsys.readouterr().err
    )
