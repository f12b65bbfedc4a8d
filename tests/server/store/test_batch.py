"""`IncidentStore.batch()` on SQLite and PostgreSQL: many review actions in one transaction (one commit),
each in its own savepoint, so a refused action rolls back alone and reads inside the batch see its writes."""

from __future__ import annotations

import pytest
from sqlalchemy import event

from probewatch.server.store import IncidentStore, ReviewError
from tests.server.store.factory import make_incident


@pytest.fixture
def store(store_location):
    s = IncidentStore.open(store_location)
    yield s
    s.close()


def _commits(store: IncidentStore) -> list[int]:
    seen: list[int] = []
    event.listen(store.engine, "commit", lambda conn: seen.append(1))
    return seen


def test_a_batch_is_one_commit_and_a_refusal_rolls_back_alone(store):
    ids = [store.record(make_incident(generation_id=f"g{k}", probe="dec", score=3.0, threshold=1.0)) for k in range(4)]
    commits = _commits(store)
    refused: list[str] = []
    with store.batch():
        for incident_id in ids[:3]:
            store.label(incident_id, "alice", "true_positive")
            assert store.get(incident_id).label == "true_positive"  # the batch reads its own writes
            store.resolve(incident_id, "alice")
        try:
            store.resolve(ids[3], "alice")  # unlabelled: refused
        except ReviewError as exc:
            refused.append(str(exc))
        store.assign(ids[3], "alice", "bob")  # the batch goes on after a refusal
    assert len(commits) == 1
    assert refused and "label it before resolving" in refused[0]
    assert [store.get(i).status for i in ids] == ["resolved"] * 3 + ["acknowledged"]  # assigning claims it
    assert store.get(ids[3]).assignee == "bob"
    actions = [e.action for e in store.events(ids[3])]
    assert "resolve" not in actions and "assign" in actions  # the refused action left no audit entry
    assert [e.action for e in store.events(ids[0])][-2:] == ["label", "resolve"]


def test_an_error_escaping_the_batch_commits_nothing(store):
    first = store.record(make_incident(generation_id="g", probe="dec", score=3.0, threshold=1.0))
    with pytest.raises(RuntimeError), store.batch():
        store.label(first, "alice", "false_positive")
        raise RuntimeError("the request died")
    assert store.get(first).label is None and store.events(first) == []


def _statements(store: IncidentStore) -> list[str]:
    seen: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda conn, cursor, sql, *a: seen.append(sql))
    return seen


def test_act_on_many_applies_the_single_action_rules_in_a_fixed_number_of_statements(store):
    ids = [store.record(make_incident(generation_id=f"g{k}", probe="dec", score=3.0, threshold=1.0)) for k in range(40)]
    store.label(ids[0], "alice", "unsure")
    store.resolve(ids[0], "alice")  # already resolved: skipped by a bulk resolve, not re-audited
    statements = _statements(store)
    done, refused = store.act_on_many(ids[1:30], "bob", "label", {"label": "false_positive", "comment": "bulk"})
    assert done == ids[1:30] and refused == {}
    label_statements = len(statements)
    done, refused = store.act_on_many([*ids[:35], 999_999], "bob", "resolve", {})
    assert done == ids[1:30]  # labelled ones; ids[0] was resolved already
    assert refused[999_999] == "no such incident"
    assert all("label it before resolving" in refused[i] for i in ids[30:35])
    assert label_statements <= 6 and len(statements) - label_statements <= 6  # not one per incident
    one = store.get(ids[5])
    assert (one.status, one.label, one.assignee) == ("resolved", "false_positive", "bob")
    assert [(e.action, e.value, e.comment) for e in store.events(ids[5])] == [
        ("label", "false_positive", "bulk"),
        ("resolve", None, None),
    ]
    assert [e.action for e in store.events(ids[0])] == ["label", "resolve"]
    assert store.get(ids[31]).status == "open" and store.events(ids[31]) == []
    with pytest.raises(ReviewError, match="not one of"):
        store.act_on_many(ids, "bob", "label", {"label": "maybe"})
