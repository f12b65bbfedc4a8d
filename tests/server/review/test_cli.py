"""`probewatch review` and the new `probewatch incidents` verbs from the command line."""

from __future__ import annotations

import json
import stat

import pytest

from probewatch.cli.main import main
from probewatch.server.store import IncidentStore, migrate
from tests.server.review.helpers import seed


def test_review_refuses_to_serve_without_authentication_off_loopback(capsys, tmp_path):
    db = str(tmp_path / "i.sqlite3")
    assert main(["review", "--db", db, "--host", "0.0.0.0"]) == 2
    assert "needs reviewer authentication: --trusted-header NAME" in capsys.readouterr().err
    assert main(["review", "--db", db, "--host", "0.0.0.0", "--reviewer", "alice"]) == 2
    assert "--reviewer gives everyone one identity: only on a loopback bind" in capsys.readouterr().err
    bad = tmp_path / "tokens"
    bad.write_text("no-colon-here\n")
    assert main(["review", "--db", db, "--token-file", str(bad)]) == 2
    assert "expected `reviewer-name:token`" in capsys.readouterr().err


def test_incidents_show_migrate_and_export_everything(capsys, tmp_path):
    db = tmp_path / "i.sqlite3"
    store = IncidentStore.open(db)
    ids = seed(store, 2)
    store.label(ids[0], "alice", "true_positive", comment="a lie")
    store.close()
    assert main(["incidents", "show", str(ids[0]), "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["label"] == "true_positive" and shown["tokens"][0] == [10, 100]
    assert shown["events"][0]["reviewer"] == "alice" and shown["events"][0]["comment"] == "a lie"
    assert main(["incidents", "show", str(ids[0]), "--db", str(db)]) == 0
    assert "alice: label true_positive “a lie”" in capsys.readouterr().out
    assert main(["incidents", "ack", str(ids[1]), "--db", str(db), "--note", "mine"]) == 0
    assert IncidentStore.open(db, readonly=True).events(ids[1])[-1].reviewer.startswith("cli")
    capsys.readouterr()
    assert main(["incidents", "migrate", "--db", str(db), "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["revision"] == result["head"] == migrate.head_revision() and result["backend"] == "sqlite"
    out = tmp_path / "all.jsonl"
    out.write_text("old")
    out.chmod(0o644)  # an existing, world-readable file is narrowed too
    assert main(["incidents", "export", "--db", str(db), "--out", str(out), "--json"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["written"] == len(ids)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == sorted(ids) and lines[0]["events"][0]["action"] == "label"
    assert lines[0]["context"]["dec"]["threshold"] == 1.0


@pytest.mark.integration
def test_labelled_export_skips_what_cannot_become_a_dialogue(capsys, tmp_path, reference):
    """Incidents of another model and prompts the chat template does not reproduce are counted, not written."""
    db = tmp_path / "i.sqlite3"
    store = IncidentStore.open(db)
    ids = seed(store, 3)  # another model's fingerprint, and prompts in no chat template
    for i in ids:
        store.label(i, "alice", "false_positive")
    store.close()
    out = tmp_path / "reviewed.jsonl"
    assert main(["incidents", "export", "--labelled", "--db", str(db), "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["written"] == 0 and summary["skipped"] == {"another model": len(ids)}
    assert out.read_text() == "" and stat.S_IMODE(out.stat().st_mode) == 0o600


def test_export_by_priority(capsys, tmp_path):
    from tests.server.store.factory import make_incident

    db = tmp_path / "i.sqlite3"
    store = IncidentStore.open(db)
    alert = store.record(make_incident(generation_id="a", probe="dec", score=3.0, threshold=1.0))
    uncertain = store.record(make_incident(generation_id="u", probe="dec", score=0.5, threshold=1.0, priority="low"))
    store.close()
    for priority, want in (("low", [uncertain]), ("normal", [alert])):
        out = tmp_path / f"{priority}.jsonl"
        argv = ["incidents", "export", "--db", str(db), "--out", str(out), "--priority", priority, "--json"]
        assert main(argv) == 0
        capsys.readouterr()
        assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == want
