"""The review unit is the flagged generation, over real HTTP (uvicorn on loopback, httpx): the grouped
queue and its JSON, one post labelling every probe ("same for all"), "save & next" through a sorted,
filtered queue, bulk actions (CSRF, audit, filter), text search, the export download (the same lines
as `probewatch incidents export`), Grafana links and assignment."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from probewatch.cli.main import main
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.grafana import DASHBOARD_UID
from tests.server.review.helpers import csrf, seed, seed_grouped

TOKEN = "alice-token-0123456789abcdef"


def test_grouped_api_and_per_incident_api_with_search(store, serve_review):
    seed_grouped(store, 3, text="a pipe bomb recipe")
    seed(store, 2)  # "answer number k": no pipe
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    grouped = httpx.get(f"{url}/api/generations", params={"q": "PIPE", "sort": "score_desc"}).json()
    assert grouped["total"] == 3 and grouped["sort"] == "score_desc"
    assert [r["generation_id"] for r in grouped["rows"]] == ["grp-2", "grp-1", "grp-0"]
    assert [b["probe"] for b in grouped["rows"][0]["incidents"]] == ["dec-sae", "dec", "ref"]
    per_incident = httpx.get(f"{url}/api/incidents", params={"q": "pipe"}).json()
    assert per_incident["total"] == 9 and all("pipe" in r["snippet"] for r in per_incident["rows"])
    assert httpx.get(f"{url}/api/incidents").json()["total"] == 9 + 3
    assert httpx.get(f"{url}/api/incidents", params={"q": "no such text"}).json()["total"] == 0
    bad = httpx.get(f"{url}/api/generations", params={"sort": "sideways"})
    assert bad.status_code == 400 and "sort 'sideways' not one of" in bad.json()["error"]
    page = httpx.get(f"{url}/", params={"q": "pipe"}).text
    assert "3 generations" in page and 'value="pipe"' in page and "answer number" not in page


def test_same_for_all_labels_every_probe_in_one_post_then_next(store, serve_review):
    seed_grouped(store, 3)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    queue = "status=unresolved&sort=margin_desc"
    html = httpx.get(f"{url}/generations/grp-2?{queue}").text
    for probe in ("dec", "dec-sae", "ref"):
        assert f'data-probe="{probe}"' in html
    assert f'name="queue" value="{queue.replace("&", "&amp;")}"' in html
    saved = httpx.post(
        f"{url}/generations/grp-2",
        data={"csrf": csrf(html), "label_all": "false_positive", "comment": "benign", "do": "next", "queue": queue},
    )
    assert saved.status_code == 303
    # margin_desc: grp-2 (margin 4) -> grp-1 (margin 2): the next generation of the same queue
    assert saved.headers["location"].startswith(f"/generations/grp-1?{queue}&done=labelled+3%2C+resolved+3")
    rows = store.generation_incidents("grp-2")
    assert {(i.probe, i.label, i.status, i.labelled_by) for i in rows} == {
        (p, "false_positive", "resolved", "alice") for p in ("dec", "dec-sae", "ref")
    }
    for i in rows:
        assert [(e.action, e.comment) for e in store.events(int(i.id))] == [("label", "benign"), ("resolve", None)]
    # per probe verdicts, saved without resolving; resolving an unlabelled one is refused and said
    ids = {i.probe: i.id for i in store.generation_incidents("grp-1")}
    partial = httpx.post(
        f"{url}/generations/grp-1", data={"csrf": csrf(html), f"label-{ids['dec']}": "true_positive", "do": "resolve"}
    )
    assert partial.status_code == 303 and "error=" in partial.headers["location"]
    assert "label+it+before+resolving" in partial.headers["location"]
    assert store.get(ids["dec"]).status == "resolved" and store.get(ids["ref"]).label is None
    # the JSON API: per probe and for all, then nothing left: "save & next" returns to the queue
    token = {"X-CSRF-Token": csrf(html)}  # the no-sign-in local reviewer is a browser: CSRF on every post
    api = httpx.post(f"{url}/api/generations/grp-0", headers=token, json={"labels": {"ref": "unsure"}, "label": None})
    assert api.status_code == 200 and api.json()["batch"]["done"] == {"label": 1}
    assert httpx.post(f"{url}/api/generations/grp-0", json={"label": "unsure"}).status_code == 403
    assert (
        httpx.post(f"{url}/api/generations/grp-0", headers=token, json={"labels": {"x": "unsure"}}).status_code == 400
    )
    assert httpx.post(f"{url}/api/generations/grp-0", headers=token, json={"label": "maybe"}).status_code == 400
    last = httpx.post(
        f"{url}/generations/grp-0",
        data={"csrf": csrf(html), "label_all": "true_positive", "do": "next", "queue": queue},
    ).headers["location"]
    assert last.startswith(f"/?{queue}&done=") and "no+more+generations" in last
    assert httpx.get(f"{url}/generations/nope").status_code == 404


def test_bulk_label_and_resolve_fifty_generations(store, serve_review):
    ids = seed(store, 60)  # 60 generations, 80 incidents
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice"}))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url) as browser:
        browser.post("/login", data={"token": TOKEN, "next": "/"})
        html = browser.get("/", params={"per_page": 50}).text
        picked = re.findall(r'name="generation" value="([^"]+)"', html)
        assert len(picked) == 50
        form = {"label": "true_positive", "resolve": "1", "queue": "per_page=50", "generation": picked}
        assert browser.post("/bulk", data=form).status_code == 403  # no CSRF token
        done = browser.post("/bulk", data={**form, "csrf": csrf(html)})
    assert done.status_code == 303
    rows = [i for g in picked for i in store.find(generation_id=g)]
    assert len(rows) == 50 + len([g for g in picked if int(g.split("-")[1]) % 3 == 0])
    assert unquote_done(done.headers["location"]) == f"50 generation(s): labelled {len(rows)}, resolved {len(rows)}"
    assert all((i.label, i.status, i.labelled_by) == ("true_positive", "resolved", "alice") for i in rows)
    assert all([e.action for e in store.events(int(i.id))] == ["label", "resolve"] for i in rows)
    # the API: incident ids; a filtered page's selection only touches what the filter selects
    left = sorted(set(ids) - {int(i.id) for i in rows})
    r = httpx.post(f"{url}/api/bulk", headers=bearer, json={"incident_ids": left[:3], "assignee": "bob"})
    assert r.status_code == 200 and r.json()["done"] == {"assign": 3}
    assert [e.value for i in left[:3] for e in store.events(i)] == ["bob"] * 3
    assert (
        httpx.post(f"{url}/api/bulk", headers=bearer, json={"incident_ids": left, "resolve": True})
        .json()["errors"][0]
        .endswith("label it before resolving")
    )
    assert httpx.post(f"{url}/api/bulk", headers=bearer, json={"generation_ids": ["gen-0"]}).status_code == 400


def unquote_done(location: str) -> str:
    return parse_qs(urlsplit(location).query)["done"][0]


def test_export_download_is_the_cli_export_under_the_filter(store, serve_review, tmp_path, capsys):
    seed_grouped(store, 4)
    store.label(store.incident_ids(None, ["grp-3"])[0], "alice", "unsure")
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = httpx.get(f"{url}/", params={"probe": "ref", "sort": "score_asc"}).text
    link = re.search(r'href="([^"]+)" id="export-link" download', page).group(1).replace("&amp;", "&")
    assert link == "/export?format=jsonl&probe=ref"
    response = httpx.get(f"{url}{link}")
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["content-disposition"].startswith('attachment; filename="probewatch-incidents-')
    records = [json.loads(x) for x in response.text.splitlines()]
    assert [(r["generation_id"], r["probe"]) for r in records] == [(f"grp-{k}", "ref") for k in range(4)]
    out = tmp_path / "cli.jsonl"
    assert main(["incidents", "export", "--db", str(store.path), "--probe", "ref", "--out", str(out)]) == 0
    assert out.read_text() == response.text  # one writer for both
    assert httpx.get(f"{url}/export", params={"format": "csv"}).status_code == 400
    assert httpx.get(f"{url}/export", params={"status": "closed"}).status_code == 400


def test_grafana_links_and_assignment(store, serve_review, tmp_path):
    dashboard = json.loads((Path(__file__).parents[3] / "deploy/grafana/probewatch-dashboard.json").read_text())
    assert dashboard["uid"] == DASHBOARD_UID and "probe" in [v["name"] for v in dashboard["templating"]["list"]]
    now = dt.datetime(2026, 12, 3, 12, 0, tzinfo=dt.timezone.utc)
    seed_grouped(store, 2, now=now)
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice", "bob-token-0123456789abcdefgh": "bob"}), None)
    assert (
        'id="grafana-link"'
        not in httpx.get(f"{url}/generations/grp-1", headers={"Authorization": f"Bearer {TOKEN}"}).text
    )
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app

    app = create_review_app(store, AuthConfig(tokens={TOKEN: "alice"}), grafana_url="https://grafana.example.com/")
    server = HTTPServerThread(app, "127.0.0.1", 0, proxy_headers=False).start()
    try:
        a = {"Authorization": f"Bearer {TOKEN}"}
        html = httpx.get(f"{server.url}/generations/grp-1", headers=a).text
        href = re.search(r'<a href="([^"]+)" id="grafana-link"', html).group(1).replace("&amp;", "&")
        parts = urlsplit(href)
        assert f"{parts.scheme}://{parts.netloc}{parts.path}" == f"https://grafana.example.com/d/{DASHBOARD_UID}"
        query = parse_qs(parts.query)
        raised = now - dt.timedelta(minutes=1)  # grp-1 of 2
        assert int(query["from"][0]) == int((raised - dt.timedelta(minutes=15)).timestamp() * 1000)
        assert int(query["to"][0]) == int((raised + dt.timedelta(minutes=15)).timestamp() * 1000)
        assert query["var-probe"] == ["ref", "dec", "dec-sae"]  # grp-1's probes, highest score first
        queue = httpx.get(f"{server.url}/", params={"probe": "ref"}, headers=a).text
        href = re.search(r'<a href="([^"]+)" id="grafana-link"', queue).group(1).replace("&amp;", "&")
        assert parse_qs(urlsplit(href).query) == {"from": ["now-24h"], "to": ["now"], "var-probe": ["ref"]}
        # assign from the generation page: every probe's incident handed to bob, audited as alice's action
        saved = httpx.post(f"{server.url}/generations/grp-1", headers=a, data={"assignee": "bob", "do": "save"})
        assert saved.status_code == 303 and "assigned+3" in saved.headers["location"]
    finally:
        server.stop()
    for i in store.generation_incidents("grp-1"):
        assert i.assignee == "bob" and [(e.action, e.reviewer, e.value) for e in store.events(int(i.id))] == [
            ("assign", "alice", "bob")
        ]
    bob = {"Authorization": "Bearer bob-token-0123456789abcdefgh"}
    mine = httpx.get(f"{url}/api/generations", params={"assignee": "bob"}, headers=bob).json()
    assert [r["generation_id"] for r in mine["rows"]] == ["grp-1"]
    page = httpx.get(f"{url}/", headers=bob).text
    assert 'href="/?status=unresolved&amp;assignee=bob" id="mine"' in page
    assert 'id="shortcut-hint"' in page and "<kbd>?</kbd> all shortcuts" in page


def test_sort_is_kept_in_the_url(store, serve_review):
    seed_grouped(store, 30)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    html = httpx.get(f"{url}/", params={"sort": "margin_asc", "per_page": 25}).text
    assert re.findall(r'data-generation="([^"]+)"', html)[:3] == ["grp-0", "grp-1", "grp-2"]
    assert '<option value="margin_asc" selected>' in html
    assert 'href="/?sort=margin_asc&amp;per_page=25&amp;page=2" rel="next"' in html
    assert 'href="/generations/grp-0?sort=margin_asc&amp;per_page=25"' in html  # the page knows its queue
    second = httpx.get(f"{url}/", params={"sort": "margin_asc", "per_page": 25, "page": 2}).text
    assert re.findall(r'data-generation="([^"]+)"', second) == [f"grp-{k}" for k in range(25, 30)]
