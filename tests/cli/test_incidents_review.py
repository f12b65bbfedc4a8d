"""`probewatch incidents label|ack|resolve|reopen` and the review app's JSON API are one service layer:
the same rules (no resolve without a verdict), the same error text, the same audit trail; and
`incidents export --labelled` says why it wrote nothing."""

from __future__ import annotations

import getpass
import json

import httpx
import pytest

from probewatch.cli.main import main
from probewatch.server.review.auth import AuthConfig
from probewatch.server.store import IncidentStore
from tests.server.review.helpers import seed

TOKEN = "alice-token-0123456789abcdef"


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "incidents.sqlite3"
    store = IncidentStore.open(path)
    seed(store, 3)  # incidents 1..4 (generation 0 alerts on two probes)
    store.close()
    return path


@pytest.fixture
def api(db):
    """The review app on loopback over the same store; post(incident, action, **body) -> httpx.Response."""
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app

    store = IncidentStore.open(db)
    server = HTTPServerThread(
        create_review_app(store, AuthConfig(tokens={TOKEN: "alice"})), "127.0.0.1", 0, proxy_headers=False
    ).start()

    def post(incident: int, action: str, **body) -> httpx.Response:
        return httpx.post(
            f"{server.url}/api/incidents/{incident}/{action}",
            headers={"Authorization": f"Bearer {TOKEN}"},
            json=body,
        )

    yield post
    server.stop()
    store.close()


def _cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_resolve_without_a_verdict_is_refused_alike_by_cli_and_api(db, api, capsys):
    refused = api(1, "resolve")
    assert refused.status_code == 400
    api_error = refused.json()["error"]
    assert api_error == "incident 1 has no label: label it before resolving"
    code, out, err = _cli(capsys, "incidents", "resolve", "2", "--db", str(db))
    assert code == 2 and out == ""
    assert err.strip() == "probewatch: error: incident 2 has no label: label it before resolving"
    store = IncidentStore.open(db, readonly=True)
    assert store.get(2).status == "open" and store.events(2) == []  # nothing changed, nothing audited


def test_label_then_resolve_from_the_cli_audited_like_the_web(db, api, capsys):
    code, out, _ = _cli(
        capsys, "incidents", "label", "2", "--verdict", "false_positive", "--note", "honest", "--db", str(db)
    )
    assert code == 0 and out.strip() == f"incident 2: acknowledged, verdict false positive (by cli:{getpass.getuser()})"
    code, out, _ = _cli(capsys, "incidents", "resolve", "2", "--db", str(db), "--reviewer", "bob", "--json")
    resolved = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and resolved["status"] == "resolved" and resolved["label"] == "false_positive"
    # the web app's verdict and the CLI's land in the same columns and the same audit trail
    assert api(3, "label", label="true_positive").status_code == 200
    store = IncidentStore.open(db, readonly=True)
    cli_row, web_row = store.get(2), store.get(3)
    assert (cli_row.label, cli_row.labelled_by, cli_row.assignee) == (
        "false_positive",
        f"cli:{getpass.getuser()}",
        cli_row.labelled_by,
    )
    assert (web_row.label, web_row.labelled_by, web_row.status) == ("true_positive", "alice", "acknowledged")
    trail = [(e.reviewer, e.action, e.value, e.comment) for e in store.events(2)]
    assert trail == [
        (f"cli:{getpass.getuser()}", "label", "false_positive", "honest"),
        ("bob", "resolve", None, None),
    ]
    assert [(e.action, e.value) for e in store.events(3)] == [("label", "true_positive")]
    # reopen goes back to acknowledged (claimed) exactly as the web's reopen does
    code, out, _ = _cli(capsys, "incidents", "reopen", "2", "--db", str(db), "--note", "second look")
    assert code == 0 and "incident 2: acknowledged" in out
    assert store.events(2)[-1].action == "reopen" and store.events(2)[-1].comment == "second look"


def test_label_refuses_unknown_verdicts_and_missing_incidents(db, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["incidents", "label", "1", "--verdict", "uncertain", "--db", str(db)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "argument --verdict: invalid choice: 'uncertain'" in err and "unsure" in err  # the web app's names
    code, _, err = _cli(capsys, "incidents", "label", "99", "--verdict", "unsure", "--db", str(db))
    assert code == 2 and "no incident with id 99" in err


def test_ack_claims_and_conflicts_like_the_web(db, api, capsys):
    assert api(1, "claim").json()["incident"]["assignee"] == "alice"
    code, _, err = _cli(capsys, "incidents", "ack", "1", "--db", str(db), "--reviewer", "bob")
    assert code == 2 and "incident 1 is claimed by alice; take it over explicitly" in err
    code, out, _ = _cli(
        capsys, "incidents", "ack", "1", "--db", str(db), "--reviewer", "bob", "--takeover", "--note", "mine"
    )
    assert code == 0 and out.strip() == "incident 1: acknowledged (by bob)"
    store = IncidentStore.open(db, readonly=True)
    assert store.get(1).assignee == "bob"
    assert [(e.reviewer, e.action, e.comment) for e in store.events(1)] == [
        ("alice", "claim", None),
        ("bob", "claim", None),
        ("bob", "comment", "mine"),
    ]


def test_incident_db_alias_is_accepted(db, capsys):
    code, out, _ = _cli(capsys, "incidents", "list", "--incident-db", str(db), "--json")
    assert code == 0 and len(json.loads(out.strip().splitlines()[-1])) == 4


def test_export_labelled_with_nothing_labelled_says_why(db, tmp_path, capsys):
    out_file = tmp_path / "reviewed.jsonl"
    code, out, _ = _cli(capsys, "incidents", "export", "--labelled", "--out", str(out_file), "--db", str(db))
    assert code == 0 and out_file.read_text() == ""
    lines = out.strip().splitlines()
    assert lines[0] == f"wrote 0 line(s) to {out_file}"
    assert lines[1].startswith(f"0 incidents labelled true_positive or false_positive in {db}")
    assert "`probewatch incidents label ID --verdict true_positive|false_positive`" in lines[1]
    # an `unsure` verdict is counted in the hint (it is not exported); --json carries the hint too
    assert _cli(capsys, "incidents", "label", "1", "--verdict", "unsure", "--db", str(db))[0] == 0
    code, out, _ = _cli(
        capsys, "incidents", "export", "--labelled", "--probe", "dec", "--out", str(out_file), "--db", str(db), "--json"
    )
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["written"] == 0
    assert summary["hint"].startswith(
        f"0 incidents of probe dec labelled true_positive or false_positive in {db} (1 labelled unsure"
    )
