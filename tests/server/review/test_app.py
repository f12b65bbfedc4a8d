"""The review app over real HTTP (uvicorn on loopback, httpx): identity, CSRF, the queue, the incident
page, actions and their errors, metrics, and mounting under a prefix."""

from __future__ import annotations

import re

import httpx
import pytest

from probewatch.server.review.auth import AuthConfig, ReviewAuthError, read_reviewer_tokens
from probewatch.server.review.catalog import Catalog
from tests.server.grpc_helpers import metric_value
from tests.server.review.helpers import FINGERPRINT, csrf, seed

TOKEN_A = "alice-token-0123456789abcdef"
TOKEN_B = "bob-token-0123456789abcdefgh"


def test_identity_from_a_trusted_proxy_header_only(store, serve_review):
    seed(store, 3)
    url = serve_review(store, AuthConfig(trusted_headers=("X-Forwarded-User", "X-Auth-Request-Email")))
    page = httpx.get(f"{url}/", headers={"X-Auth-Request-Email": "carol@example.com"})
    assert page.status_code == 200 and "carol@example.com" in page.text
    page = httpx.get(f"{url}/", headers={"X-Forwarded-User": "dave", "X-Auth-Request-Email": "other@example.com"})
    assert "dave" in page.text  # the first configured header wins
    anonymous = httpx.get(f"{url}/")
    assert anonymous.status_code == 401 and "trusted proxy header" in anonymous.text
    api = httpx.get(f"{url}/api/incidents")
    assert api.status_code == 401 and api.headers["www-authenticate"] == "Bearer"
    # the same header from a peer that is not the configured proxy is ignored
    url = serve_review(store, AuthConfig(trusted_headers=("X-Forwarded-User",), trusted_proxies=("10.0.0.0/8",)))
    assert httpx.get(f"{url}/", headers={"X-Forwarded-User": "mallory"}).status_code == 401
    # an action through the header identity: the form needs the CSRF token of that reviewer
    url = serve_review(store, AuthConfig(trusted_headers=("X-Forwarded-User",)))
    headers = {"X-Forwarded-User": "dave"}
    html = httpx.get(f"{url}/incidents/1", headers=headers).text
    forged = httpx.post(f"{url}/incidents/1", headers=headers, data={"action": "claim", "csrf": "0" * 40})
    assert forged.status_code == 403 and store.get(1).assignee is None
    ok = httpx.post(f"{url}/incidents/1", headers=headers, data={"action": "claim", "csrf": csrf(html)})
    assert ok.status_code == 303 and ok.headers["location"].endswith("/incidents/1?done=claim#actions")
    assert store.get(1).assignee == "dave" and store.events(1)[-1].reviewer == "dave"
    # another reviewer's CSRF token does not work for dave
    other = csrf(httpx.get(f"{url}/incidents/1", headers={"X-Forwarded-User": "erin"}).text)
    assert (
        httpx.post(f"{url}/incidents/1", headers=headers, data={"action": "unclaim", "csrf": other}).status_code == 403
    )


def test_bearer_tokens_for_api_clients_and_browsers(store, serve_review, tmp_path):
    seed(store, 3)
    token_file = tmp_path / "tokens"
    token_file.write_text(f"# reviewers\nalice:{TOKEN_A}\nbob:{TOKEN_B}\n")
    url = serve_review(store, AuthConfig(tokens=read_reviewer_tokens(token_file)))
    api = httpx.get(f"{url}/api/incidents", headers={"Authorization": f"Bearer {TOKEN_B}"})
    assert api.status_code == 200 and api.json()["total"] == len(store.find())
    assert httpx.get(f"{url}/api/incidents", headers={"Authorization": "Bearer nope-nope-nope-nope"}).status_code == 401
    # an API action with the Authorization header needs no CSRF token (a browser never adds that header)
    r = httpx.post(
        f"{url}/api/incidents/1/label",
        headers={"Authorization": f"Bearer {TOKEN_B}"},
        json={"label": "unsure", "comment": "need context"},
    )
    assert r.status_code == 200 and r.json()["incident"]["labelled_by"] == "bob"
    assert r.json()["events"][-1]["comment"] == "need context"
    # a browser: the queue redirects to /login; a wrong token is refused; the right one sets a cookie
    with httpx.Client(base_url=url) as browser:
        first = browser.get("/")
        assert first.status_code == 303 and first.headers["location"].startswith("/login?next=")
        assert browser.post("/login", data={"token": "wrong-wrong-wrong-wrong", "next": "/"}).status_code == 401
        login = browser.post("/login", data={"token": TOKEN_A, "next": "/incidents/2"})
        assert login.status_code == 303 and login.headers["location"] == "/incidents/2"
        cookie = login.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie
        html = browser.get("/incidents/2").text
        assert "alice" in html
        assert browser.post("/incidents/2", data={"action": "claim"}).status_code == 403  # cookie auth: CSRF required
        assert browser.post("/incidents/2", data={"action": "claim", "csrf": csrf(html)}).status_code == 303
        assert store.get(2).assignee == "alice"
        # an open redirect through ?next= is not possible
        assert browser.post("/login", data={"token": TOKEN_A, "next": "//evil.example/"}).headers["location"] == "/"
        assert browser.post("/login", data={"token": TOKEN_A, "next": "/\\evil.example/"}).headers["location"] == "/"
        assert browser.post("/logout", data={"csrf": csrf(html)}).status_code == 303
        assert browser.get("/").status_code == 303


def test_token_file_errors(tmp_path):
    bad = tmp_path / "tokens"
    bad.write_text("alice-without-a-token\n")
    with pytest.raises(ReviewAuthError, match="tokens:1: expected `reviewer-name:token`"):
        read_reviewer_tokens(bad)
    bad.write_text("alice:short\n")
    with pytest.raises(ReviewAuthError, match="at least 16 characters"):
        read_reviewer_tokens(bad)
    with pytest.raises(ReviewAuthError, match="cannot read the review token file"):
        read_reviewer_tokens(tmp_path / "missing")
    with pytest.raises(ReviewAuthError, match="--trusted-proxy"):
        AuthConfig(trusted_headers=("X",), trusted_proxies=("not-a-network",))


def test_api_actions_and_their_errors(store, serve_review):
    seed(store, 3)
    url = serve_review(store, AuthConfig(tokens={TOKEN_A: "alice", TOKEN_B: "bob"}))
    a = {"Authorization": f"Bearer {TOKEN_A}"}
    b = {"Authorization": f"Bearer {TOKEN_B}"}

    def post(headers, incident, action, **body):
        return httpx.post(f"{url}/api/incidents/{incident}/{action}", headers=headers, json=body)

    assert post(a, 1, "claim").json()["incident"]["assignee"] == "alice"
    conflict = post(b, 1, "claim")
    assert conflict.status_code == 409 and "claimed by alice" in conflict.json()["error"]
    assert post(b, 1, "takeover").json()["incident"]["assignee"] == "bob"
    assert post(b, 1, "label", label="maybe").status_code == 400
    assert "label it before resolving" in post(b, 1, "resolve").json()["error"]
    assert post(b, 1, "label", label="true_positive").status_code == 200
    assert post(b, 1, "severity", severity="critical").json()["incident"]["severity"] == "critical"
    assert post(b, 1, "resolve", comment="confirmed").json()["incident"]["status"] == "resolved"
    assert post(a, 99, "claim").status_code == 404
    assert post(a, 1, "dance").status_code == 400
    bad = httpx.post(f"{url}/api/incidents/1/comment", headers=a, content=b"[1, 2]")
    assert bad.status_code == 400 and "JSON object" in bad.json()["error"]
    shown = httpx.get(f"{url}/api/incidents/1", headers=a).json()
    assert [e["action"] for e in shown["events"]] == ["claim", "claim", "label", "severity", "resolve"]
    assert httpx.get(f"{url}/api/incidents/99", headers=a).status_code == 404
    assert httpx.get(f"{url}/api/incidents?score_min=abc", headers=a).json() == {
        "error": "score min 'abc' is not a number"
    }
    assert httpx.get(f"{url}/api/incidents?status=closed", headers=a).status_code == 400


def test_queue_page_filters_counts_and_paging(store, serve_review):
    ids = seed(store, 120)  # 120 generations: dec on each, ref too on every third (160 incidents)
    store.label(ids[0], "alice", "false_positive")
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    html = httpx.get(f"{url}/").text
    assert "120 generations" in html and "page 1 of 3" in html
    assert re.findall(r'data-status="(\w+)"[^>]*>\w+ <b class="count">(\d+)</b>', html) == [
        ("open", "120"),  # generations with an open incident: gen-0's ref is still open
        ("acknowledged", "1"),
        ("resolved", "0"),
    ]
    shown = re.findall(r'<tr class="row[^"]*" data-href="[^"]+" data-generation="([^"]+)"', html)
    assert shown == [f"gen-{k}" for k in range(119, 69, -1)]  # newest first
    gen0 = store.find(generation_id="gen-0")
    assert {i.probe for i in gen0} == {"dec", "ref"}  # one row for both, each probe a badge linking its incident
    page3 = httpx.get(f"{url}/", params={"page": 3}).text
    assert f'href="/incidents/{gen0[0].id}" data-id="{gen0[0].id}"' in page3
    assert re.findall(r'data-generation="([^"]+)"', page3)[-1] == "gen-0"
    filtered = httpx.get(f"{url}/", params={"probe": "ref", "score_min": "2.6", "per_page": 25}).text
    rows = re.findall(r'<tr class="row[^"]*" data-href="[^"]+" data-generation="([^"]+)"', filtered)
    assert len(rows) == 25 and all(int(g.split("-")[1]) % 3 == 0 for g in rows)
    assert (
        "40 generations" in filtered and 'href="/?probe=ref&amp;score_min=2.6&amp;per_page=25&amp;page=2"' in filtered
    )
    labelled = httpx.get(f"{url}/", params={"label": "false_positive"}).text
    assert re.findall(r'data-generation="([^"]+)"', labelled) == [store.get(ids[0]).generation_id]
    bad = httpx.get(f"{url}/", params={"score_min": "lots"})
    assert bad.status_code == 400 and "score min &#39;lots&#39; is not a number" in bad.text


def test_incident_page(store, serve_review, tmp_path, tiny_bundle):
    ids = seed(store, 4)
    incident = store.get(ids[0])  # generation 0: dec scores -1.0 .. 1.5 over 6 tokens, threshold 1.0
    url = serve_review(store, AuthConfig(local_reviewer="alice"), Catalog([tiny_bundle], discover=False))
    html = httpx.get(f"{url}/incidents/{incident.id}").text
    heatmap = html.split('data-probe="dec"', 1)[1].split("</div>", 2)[0]
    cells = re.findall(r'<span class="tok([^"]*)" data-pos="(\d+)" data-score="([-0-9.]+)"', heatmap)
    assert [int(p) for _, p, _ in cells] == [10, 11, 12, 13, 14, 15]
    assert [int(p) for cls, p, _ in cells if "hot" in cls] == [14, 15]  # scores 1.0 and 1.5 >= threshold 1.0
    assert "⟨104⟩" in heatmap  # no tokenizer for this model here: token ids shown
    assert "position 15 · score +1.500" in heatmap
    assert 'data-probe="ref"' in html and 'data-probe="af"' in html  # the other probes' heatmaps
    assert re.search(r"<td>ref</td><td>refusal</td>\s*<td class=\"score hot\">\+5\.000</td>", html)
    assert f'href="/incidents/{ids[1]}">incident #{ids[1]}</a>' in html  # ref alerted on generation 0 too
    assert "answer number 0" in html and "tenant" in html and FINGERPRINT in html
    assert 'id="control-set">harmless-control.jsonl (321 dialogues)' in html  # from the bundle's manifest
    assert "alert raised while generating (early)" in html
    assert httpx.get(f"{url}/incidents/999").status_code == 404


def test_text_from_clients_is_escaped(store, serve_review):
    from probewatch.server.store import Incident

    evil = "<script>alert(1)</script>"
    store.record(
        Incident(
            generation_id="x",
            probe="dec",
            behaviour="deception",
            score=2.0,
            threshold=1.0,
            model_fingerprint=FINGERPRINT,
            bundle_version="1",
            prompt=evil,
            response=evil,
            metadata={"user": evil},
            token_scores=[[0, 2.0]],
        )
    )
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    for page in (httpx.get(f"{url}/").text, httpx.get(f"{url}/incidents/1").text):
        assert evil not in page and "&lt;script&gt;" in page


def test_review_metrics(store, serve_review):
    ids = seed(store, 10)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    text = httpx.get(f"{url}/metrics").text
    assert metric_value(text, "probewatch_review_incidents", status="open") == len(ids)
    assert metric_value(text, "probewatch_review_oldest_incident_age_seconds", status="open") >= 600
    assert metric_value(text, "probewatch_review_store_up") == 1
    dec = [i for i in ids if store.get(i).probe == "dec"]
    store.label(dec[0], "alice", "true_positive")
    store.label(dec[1], "alice", "false_positive")
    store.label(dec[2], "alice", "true_positive")
    store.resolve(dec[0], "alice")
    text = httpx.get(f"{url}/metrics").text
    probe = "dec"
    assert metric_value(text, "probewatch_review_incidents", status="resolved") == 1
    assert metric_value(text, "probewatch_review_incidents", status="acknowledged") == 2
    assert metric_value(text, "probewatch_review_labels", probe=probe, verdict="true_positive") == 2
    assert metric_value(text, "probewatch_review_precision", probe=probe) == pytest.approx(2 / 3)


def test_mounted_under_a_prefix(store, tmp_path):
    from fastapi import FastAPI

    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app

    seed(store, 2)
    parent = FastAPI()
    parent.mount("/review", create_review_app(store, AuthConfig(local_reviewer="alice")))
    server = HTTPServerThread(parent, "127.0.0.1", 0).start()
    try:
        html = httpx.get(f"{server.url}/review/").text
        assert 'href="/review/incidents/1"' in html and 'href="/review/static/review.css"' in html
        assert httpx.get(f"{server.url}/review/static/review.js").status_code == 200
        page = httpx.get(f"{server.url}/review/incidents/1").text
        form = httpx.post(f"{server.url}/review/incidents/1", data={"action": "claim", "csrf": csrf(page)})
        assert form.headers["location"] == "/review/incidents/1?done=claim#actions"
        assert "probewatch_review_incidents" in httpx.get(f"{server.url}/review/metrics").text
    finally:
        server.stop()


@pytest.fixture
def tiny_bundle(tmp_path):
    import json

    from tests.probes.helpers import make_bundle

    path, _ = make_bundle(tmp_path / "bundles", "dec", layer=2, d=8, seed=1, aggregation="max", fingerprint=FINGERPRINT)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["version"] = "7"
    manifest["threshold"].update({"calibration_set": "harmless-control.jsonl", "n_calibration": 321})
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path
