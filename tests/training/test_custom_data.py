"""A user's own data files (`probewatch train --data`): every kind is evaluated, the report notes custom data."""

from __future__ import annotations

from probewatch.data.dialogue import Dialogue, write_dialogues
from probewatch.training.pipeline import TrainConfig, extract, make_splits, prepare_data
from tests.training.helpers import control_dialogues, synthetic_dialogues


def test_a_data_file_named_custom_data_is_tested_and_noted(tiny_loaded, tmp_path):
    # without a "kind" field a dialogue's kind is its file's stem: here "custom_data", the name of the note
    # that was once passed as train_only_kinds, which kept the whole file out of the test split
    data, control = tmp_path / "custom_data.jsonl", tmp_path / "control.jsonl"
    write_dialogues(data, [Dialogue(d.messages, d.label, d.group) for d in synthetic_dialogues(n_groups=20)])
    write_dialogues(control, control_dialogues())
    config = TrainConfig(behaviour="deception", data_files=[data], control_file=control, layers=[1], progress=False)

    prepared = prepare_data(config, tiny_loaded)
    assert {d.kind for d in prepared.data.pool} == {"custom_data"}
    assert prepared.data.train_only_kinds == ()
    assert prepared.data.notes == {"custom_data": True}  # what the report's data.notes says

    splits = make_splits(config, extract(config, tiny_loaded, prepared, [1]), prepared.data)
    pool = splits.pool
    assert pool.train_only == ()
    assert len(pool.test_idx) > 0 and set(pool.kinds[pool.test_idx]) == {"custom_data"}
    assert len(pool.fit_idx) + len(pool.val_idx) + len(pool.test_idx) == len(prepared.data.pool)
