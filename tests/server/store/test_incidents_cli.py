"""The incident store and the review CLI (`probewatch incidents list|show|ack|label|resolve`)."""

from __future__ import annotations

import json

import pytest

from probewatch.cli.main import main
from probewatch.server.store import IncidentNotFoundError, IncidentStore, IncidentStoreError
from tests.server.store.factory import make_incident


def test_record_list_get_and_review(tmp_path):
    store = IncidentStore.open(tmp_path / "sub" / "inc.sqlite3")
    a = store.record(make_incident())
    b = store.record(make_incident(generation_id="g2", probe="ref", behaviour="refusal", prompt=None, response=None))
    assert (a, b) == (1, 2) and store.count() == 2
    got = store.get(a)
    assert got.token_scores == [[7, 0.5], [8, 2.5]] and got.metadata == {"tenant": "x"} and got.status == "open"
    assert [i.id for i in store.find()] == [2, 1]
    assert [i.id for i in store.find(probe="ref")] == [2]
    store.set_status(a, "acknowledged", note="looking")
    assert [i.id for i in store.find(status="acknowledged")] == [1]
    assert store.get(a).note == "looking"
    with pytest.raises(IncidentNotFoundError, match="no incident with id 99"):
        store.set_status(99, "resolved")
    with pytest.raises(ValueError, match="status 'closed' not one of"):
        store.set_status(a, "closed")
    store.close()
    # durable: a new connection (another process in production) sees the rows
    assert IncidentStore.open(tmp_path / "sub" / "inc.sqlite3", readonly=True).count() == 2


def test_incidents_cli(tmp_path, capsys):
    db = tmp_path / "inc.sqlite3"
    store = IncidentStore.open(db)
    store.record(make_incident())
    store.record(make_incident(generation_id="g2", probe="ref", behaviour="refusal"))
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
    assert main(["incidents", "resolve", "1", "--db", str(db)]) == 2  # as in the review app: a verdict first
    assert "incident 1 has no label: label it before resolving" in capsys.readouterr().err
    assert main(["incidents", "label", "1", "--verdict", "true_positive", "--db", str(db)]) == 0
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


# -- crash safety: written at alert time, completed at close, idempotent --------------------------------------
def test_alert_row_is_written_open_then_completed(tmp_path):
    store = IncidentStore.open(tmp_path / "inc.sqlite3")
    first = store.record_alert(make_incident(generation_status="open", token_scores=[[7, 0.5]], prompt=None))
    again = store.record_alert(make_incident(generation_status="open"))  # a retried write: same row
    assert first == again and store.count() == 1
    # another process (the review CLI) sees the row before the generation ends
    assert IncidentStore.open(tmp_path / "inc.sqlite3", readonly=True).get(first).generation_status == "open"
    store.complete(
        first, score=3.0, token_scores=[[7, 0.5], [8, 3.0]], generation_status="closed", prompt="q", response="a"
    )
    done = store.get(first)
    assert (done.score, done.generation_status, done.prompt, done.response) == (3.0, "closed", "q", "a")
    assert done.token_scores == [[7, 0.5], [8, 3.0]]
    # record() of an alert raised at close for the same (generation, probe) updates that row too
    assert store.record(make_incident(score=4.0, generation_status="aborted")) == first and store.count() == 1
    assert store.get(first).generation_status == "aborted"
    with pytest.raises(ValueError, match="generation status 'bogus'"):
        store.complete(first, score=1.0, token_scores=[], generation_status="bogus")


def test_rows_left_open_become_interrupted(tmp_path):
    store = IncidentStore.open(tmp_path / "inc.sqlite3")
    a = store.record_alert(make_incident(generation_status="open"))
    b = store.record(make_incident(generation_id="g2"))
    assert store.mark_interrupted() == 1
    assert store.get(a).generation_status == "interrupted" and store.get(b).generation_status == "closed"
    assert [i.id for i in store.find(generation_status="interrupted")] == [a]


# -- private data: store-text modes, pseudonyms, file modes, retention, deletion ---------------------------------
def test_store_text_modes(tmp_path):
    text = "my email is jane@corp.example, card 4111 1111 1111 1111, call +44 20 7946 0958"
    rows = {}
    for mode in ("full", "redacted", "none"):
        store = IncidentStore.open(tmp_path / f"{mode}.sqlite3", store_text=mode)
        rows[mode] = store.get(
            store.record(
                make_incident(
                    prompt=text,
                    response="ok " + text,
                    metadata={"user": "jane", "tenant": "acme"},
                    prompt_length=7,
                    tokens=[[7, 1001], [8, 1002]],
                )
            )
        )
        store.close()
    assert rows["full"].prompt == text and rows["full"].metadata == {"user": "jane", "tenant": "acme"}
    assert rows["redacted"].prompt == "my email is [email], card [card], call [phone]"
    assert rows["redacted"].response == "ok my email is [email], card [card], call [phone]"
    assert rows["none"].prompt is None and rows["none"].response is None
    # token ids spell the text out: only `full` keeps them (the review heatmap then shows positions)
    assert rows["full"].tokens == [[7, 1001], [8, 1002]]
    assert rows["redacted"].tokens == [] and rows["none"].tokens == []
    for mode in ("redacted", "none"):
        meta = rows[mode].metadata
        assert meta["tenant"] == "acme" and meta["user"].startswith("anon:") and "jane" not in meta["user"]
    # a pseudonym is stable within a store (same user -> same pseudonym across incidents and restarts)
    store = IncidentStore.open(tmp_path / "none.sqlite3", store_text="none")
    assert (
        store.get(store.record(make_incident(generation_id="g9", metadata={"user": "jane"}))).metadata["user"]
        == (rows["none"].metadata["user"])
    )
    with pytest.raises(IncidentStoreError, match="store-text mode 'some'"):
        IncidentStore.open(tmp_path / "x.sqlite3", store_text="some")


def test_text_is_capped(tmp_path):
    store = IncidentStore.open(tmp_path / "inc.sqlite3", max_text_chars=10)
    got = store.get(store.record(make_incident(prompt="x" * 25)))
    assert got.prompt == "x" * 10 + "…[truncated 15 chars]"


def test_database_files_are_private(tmp_path):
    import os
    import subprocess

    db = tmp_path / "private" / "inc.sqlite3"
    store = IncidentStore.open(db)
    store.record(make_incident())
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    assert all(f.exists() for f in files)
    modes = subprocess.run(["stat", "-c", "%a", *map(str, files)], capture_output=True, text=True, check=True)
    assert modes.stdout.split() == ["600", "600", "600"]
    assert oct(os.stat(db.parent).st_mode & 0o777) == "0o700"
    store.close()
    # a store an older version left world-readable is narrowed on open
    os.chmod(db, 0o644)
    IncidentStore.open(db).close()
    assert subprocess.run(["stat", "-c", "%a", str(db)], capture_output=True, text=True).stdout.strip() == "600"


def test_retention_and_deletion_remove_the_text_from_disk(tmp_path):
    import datetime as dt

    db = tmp_path / "inc.sqlite3"
    store = IncidentStore.open(db)
    old = make_incident(generation_id="old", prompt="SECRET-OLD-PROMPT")
    old.created_at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).isoformat(timespec="milliseconds")
    store.record(old)
    keep = store.record(make_incident(generation_id="new", prompt="recent"))
    gone = store.record(make_incident(generation_id="bye", prompt="SECRET-BYE-PROMPT"))
    assert store.purge_older_than(30) == 1
    assert [i.generation_id for i in store.find()] == ["bye", "new"]
    assert store.delete(ids=[gone]) == 1 and [i.id for i in store.find()] == [keep]
    store.close()
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("inc.sqlite3"))
    assert b"SECRET-OLD-PROMPT" not in raw and b"SECRET-BYE-PROMPT" not in raw and b"recent" in raw
    with pytest.raises(ValueError, match="delete needs"):
        IncidentStore.open(db).delete()


def test_incidents_delete_cli(tmp_path, capsys):
    db = tmp_path / "inc.sqlite3"
    store = IncidentStore.open(db)
    for gid in ("g1", "g2", "g3"):
        store.record(make_incident(generation_id=gid))
    store.record(make_incident(generation_id="g3", probe="ref"))
    store.close()
    assert main(["incidents", "delete", "1", "--db", str(db), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["deleted"] == 1
    assert main(["incidents", "delete", "--generation", "g3", "--db", str(db)]) == 0
    assert "deleted 2 incident(s)" in capsys.readouterr().out
    assert main(["incidents", "delete", "--db", str(db)]) == 2
    assert "name incident ids" in capsys.readouterr().err
    assert main(["incidents", "delete", "--all", "--db", str(db)]) == 0
    assert "deleted 1 incident(s)" in capsys.readouterr().out
    assert IncidentStore.open(db, readonly=True).count() == 0
    assert main(["incidents", "delete", "--all", "--db", str(tmp_path / "nope.sqlite3")]) == 2
    assert "no incident store at" in capsys.readouterr().err
    assert not (tmp_path / "nope.sqlite3").exists()
