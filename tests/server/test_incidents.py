"""The incident store and the review CLI (`probewatch incidents list|show|ack|resolve`)."""

from __future__ import annotations

import json

import pytest

from probewatch.cli.main import main
from probewatch.server.incidents import Incident, IncidentNotFoundError, IncidentStore, IncidentStoreError


def _incident(**kw) -> Incident:
    base = {
        "generation_id": "g1",
        "probe": "dec",
        "behaviour": "deception",
        "score": 2.5,
        "threshold": 1.0,
        "model_fingerprint": "pwfp1:" + "ab" * 16,
        "bundle_version": "3",
        "aggregation": "max",
        "token_scores": [[7, 0.5], [8, 2.5]],
        "prompt": "q",
        "response": "a",
        "metadata": {"tenant": "x"},
    }
    base.update(kw)
    return Incident(**base)


def test_record_list_get_and_review(tmp_path):
    store = IncidentStore.open(tmp_path / "sub" / "inc.sqlite3")
    a = store.record(_incident())
    b = store.record(_incident(generation_id="g2", probe="ref", behaviour="refusal", prompt=None, response=None))
    assert (a, b) == (1, 2) and store.count() == 2
    got = store.get(a)
    assert got.token_scores == [[7, 0.5], [8, 2.5]] and got.metadata == {"tenant": "x"} and got.status == "open"
    assert [i.id for i in store.list()] == [2, 1]
    assert [i.id for i in store.list(probe="ref")] == [2]
    store.set_status(a, "acknowledged", note="looking")
    assert [i.id for i in store.list(status="acknowledged")] == [1]
    assert store.get(a).note == "looking"
    with pytest.raises(IncidentNotFoundError, match="no incident with id 99"):
        store.set_status(99, "resolved")
    with pytest.raises(ValueError, match="status 'closed' not one of"):
        store.set_status(a, "closed")
    store.close()
    # durable: a new connection (another process in production) sees the rows
    assert IncidentStore.open(tmp_path / "sub" / "inc.sqlite3", readonly=True).count() == 2


def test_unusable_paths_fail_at_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IncidentStoreError, match="cannot open the incident store at .*file/inc.sqlite3"):
        IncidentStore.open(blocker / "inc.sqlite3")
    with pytest.raises(IncidentStoreError, match="is a directory"):
        IncidentStore.open(tmp_path)
    not_sqlite = tmp_path / "junk.sqlite3"
    not_sqlite.write_bytes(b"this is not a database" * 100)
    with pytest.raises(IncidentStoreError, match="cannot open the incident store"):
        IncidentStore.open(not_sqlite)
    with pytest.raises(IncidentStoreError, match="no incident store at"):
        IncidentStore.open(tmp_path / "missing.sqlite3", readonly=True)


def test_incidents_cli(tmp_path, capsys):
    db = tmp_path / "inc.sqlite3"
    store = IncidentStore.open(db)
    store.record(_incident())
    store.record(_incident(generation_id="g2", probe="ref", behaviour="refusal"))
    store.close()

    assert main(["incidents", "list", "--db", str(db), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [r["id"] for r in rows] == [2, 1] and "token_scores" not in rows[0]
    assert main(["incidents", "list", "--db", str(db), "--probe", "dec", "--json"]) == 0
    assert [r["probe"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])] == ["dec"]
    assert main(["incidents", "show", "1", "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["token_scores"] == [[7, 0.5], [8, 2.5]] and shown["response"] == "a"
    assert main(["incidents", "ack", "1", "--db", str(db), "--note", "on it"]) == 0
    assert "incident 1: acknowledged" in capsys.readouterr().out
    assert main(["incidents", "resolve", "1", "--db", str(db)]) == 0
    capsys.readouterr()
    assert main(["incidents", "list", "--db", str(db), "--status", "resolved", "--json"]) == 0
    assert [r["id"] for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])] == [1]
    assert main(["incidents", "list", "--db", str(db)]) == 0  # the rich table renders
    assert "ref" in capsys.readouterr().out
    assert main(["incidents", "show", "42", "--db", str(db)]) == 2
    assert "no incident with id 42" in capsys.readouterr().err
    assert main(["incidents", "list", "--db", str(tmp_path / "nope.sqlite3")]) == 2
    assert "no incident store at" in capsys.readouterr().err
