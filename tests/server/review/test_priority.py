"""Priority in the review app over real HTTP: uncertain results (priority low: the score ended in a probe's band
below its threshold, no alert) show as such, filter apart from alerts and sort either way; a bad priority is the
app's own 400. Also `probewatch incidents list` shows and filters the priority."""

from __future__ import annotations

import json

import httpx

from probewatch.cli.main import main
from probewatch.server.review.auth import AuthConfig
from tests.server.store.factory import make_incident


def seed_priorities(store) -> dict[str, int]:
    ids = {}
    for gid, score, priority in (("alert-1", 2.0, "normal"), ("unsure-1", 0.6, "low"), ("alert-2", 3.0, "normal")):
        ids[gid] = store.record(
            make_incident(generation_id=gid, probe="dec", score=score, threshold=1.0, priority=priority)
        )
    return ids


def test_queue_filters_and_sorts_by_priority(store, serve_review):
    ids = seed_priorities(store)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    low = httpx.get(f"{url}/api/generations", params={"priority": "low"}).json()
    assert [r["generation_id"] for r in low["rows"]] == ["unsure-1"] and low["rows"][0]["priority"] == "low"
    assert low["rows"][0]["incidents"][0]["priority"] == "low"
    normal = httpx.get(f"{url}/api/incidents", params={"priority": "normal"}).json()
    assert [r["generation_id"] for r in normal["rows"]] == ["alert-2", "alert-1"]
    first = httpx.get(f"{url}/api/generations", params={"sort": "priority_asc"}).json()
    assert [r["generation_id"] for r in first["rows"]] == ["unsure-1", "alert-2", "alert-1"]
    last = httpx.get(f"{url}/api/generations", params={"sort": "priority_desc"}).json()
    assert [r["generation_id"] for r in last["rows"]] == ["alert-2", "alert-1", "unsure-1"]
    bad = httpx.get(f"{url}/api/generations", params={"priority": "urgent"})
    assert bad.status_code == 400 and bad.json()["error"] == "priority 'urgent' not one of low, normal"
    page = httpx.get(f"{url}/", params={"priority": "low"})
    assert page.status_code == 200 and "1 generation" in page.text
    assert 'data-priority="low"' in page.text and 'data-priority="normal"' not in page.text
    assert '<option value="low" selected>' in page.text and "priority, uncertain first" in page.text
    assert httpx.get(f"{url}/", params={"priority": "urgent"}).status_code == 400
    incident = httpx.get(f"{url}/incidents/{ids['unsure-1']}").text
    assert 'id="uncertain-note"' in incident and "no alert or webhook was raised" in incident
    assert 'id="uncertain-note"' not in httpx.get(f"{url}/incidents/{ids['alert-1']}").text


def test_incidents_list_shows_and_filters_priority(store, capsys):
    seed_priorities(store)
    db = str(store.path)
    assert main(["incidents", "list", "--db", db, "--priority", "low", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["generation_id"], r["priority"]) for r in rows] == [("unsure-1", "low")]
    assert main(["incidents", "list", "--db", db]) == 0
    out = capsys.readouterr().out
    assert "prio" in out and "low" in out and "normal" in out
    assert main(["incidents", "list", "--db", db, "--priority", "normal", "--json"]) == 0
    assert {r["priority"] for r in json.loads(capsys.readouterr().out)} == {"normal"}
