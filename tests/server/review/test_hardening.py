"""Issue 20 on the review app, over real HTTP (uvicorn on loopback, httpx): DNS rebinding (Host
allow-list), out-of-range numbers in the queue and incident paths (400/404, never 500), and
sign-out behind the CSRF token."""

from __future__ import annotations

import argparse
import re

import httpx
import pytest

from probewatch.cli.review_cmd import add_review_arguments, auth_config
from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.hosts import AllowedHostError, allowed_hosts, host_permitted
from tests.server.grpc_helpers import metric_value
from tests.server.review.helpers import csrf, seed

TOKEN = "alice-token-0123456789abcdef"


@pytest.fixture
def store(store):
    seed(store, 3)
    return store


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_review_arguments(parser, standalone=True)
    return parser.parse_args(list(argv))


def test_dns_rebinding_host_is_refused(store, serve_review):
    """A no-sign-in loopback app (the laptop default) read through a rebound name: 400, no text."""
    url = serve_review(store, auth_config(_args("--reviewer", "alice"), "127.0.0.1"))
    port = url.rsplit(":", 1)[1]
    text = store.get(1).response
    attack = httpx.get(f"{url}/incidents/1", headers={"Host": f"attacker.example:{port}"})
    assert attack.status_code == 400 and text not in attack.text and "Host is not served here" in attack.text
    assert httpx.get(f"{url}/api/incidents", headers={"Host": "attacker.example"}).status_code == 400
    assert httpx.post(f"{url}/incidents/1", headers={"Host": "attacker.example"}, data={}).status_code == 400
    assert httpx.get(f"{url}/", headers={"Host": "127.0.0.1.nip.io"}).status_code == 400  # a name, not an IP
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST.:{port}", f"[::1]:{port}", "10.1.2.3:8080"):
        page = httpx.get(f"{url}/incidents/1", headers={"Host": host})
        assert page.status_code == 200 and text in page.text, host
    assert metric_value(httpx.get(f"{url}/metrics").text, "probewatch_review_rejected_hosts_total") == 4


def test_allowed_hosts_from_flags_env_and_wildcards(store, serve_review, monkeypatch):
    args = _args("--reviewer", "alice", "--allowed-host", "review.example.com:443", "--allowed-host", "*.corp.example")
    url = serve_review(store, auth_config(args, "127.0.0.1"))

    def status(host: str) -> int:
        return httpx.get(f"{url}/", headers={"Host": host}).status_code

    assert status("review.example.com") == status("Review.Example.Com:8080") == status("a.b.corp.example") == 200
    assert status("corp.example") == status("review.example.com.evil.example") == status("evilcorp.example") == 400
    monkeypatch.setenv("PROBEWATCH_REVIEW_ALLOWED_HOSTS", "env.example, other.example")
    assert set(auth_config(_args("--reviewer", "a"), "127.0.0.1").allowed_hosts) == {
        "127.0.0.1",
        "localhost",
        "::1",
        "env.example",
        "other.example",
    }
    assert (
        "env.example" not in auth_config(_args("--reviewer", "a", "--allowed-host", "x.example"), "::1").allowed_hosts
    )
    # a named bind host is answered; a wildcard bind adds nothing
    assert allowed_hosts("box.lan") == ("box.lan", "localhost", "127.0.0.1", "::1")
    assert allowed_hosts("0.0.0.0") == ("localhost", "127.0.0.1", "::1")
    assert host_permitted("anything.example", allowed_hosts("", ["*"]))
    assert host_permitted(None, ("localhost",))  # no Host header: not a browser
    for bad in ("https://review.example.com", "review.example.com/path", "user@host", "", "a b"):
        with pytest.raises(AllowedHostError, match="is not a host name"):
            allowed_hosts("127.0.0.1", [bad])


@pytest.mark.parametrize(
    "query, message",
    [
        ("page=99999999999999999999", "page must be between 1 and 1000000"),
        ("page=0", "page must be between 1 and 1000000"),
        ("page=-5", "page must be between 1 and 1000000"),
        ("page=1e3", "page &#39;1e3&#39; is not a whole number"),
        ("per_page=99999999999999999999", "per_page must be between 1 and 500"),
        ("per_page=0", "per_page must be between 1 and 500"),
        ("per_page=501", "per_page must be between 1 and 500"),
        ("since=99999999999999999999d", "is too long ago: at most 36500d"),
        ("since=" + "9" * 400 + "w", "is too long ago"),
        ("until=9999-12-31T23:00-05:00", "is not a time"),
        ("since=0001-01-01T00:00+05:00", "is not a time"),
        ("score_min=nan", "score min &#39;nan&#39; is not a finite number"),
        ("score_max=1e999", "is not a finite number"),
    ],
)
def test_queue_numbers_out_of_bounds_are_400(store, serve_review, query, message):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = httpx.get(f"{url}/?{query}")
    assert page.status_code == 400 and message in page.text
    assert 'id="filters"' in page.text and 'class="row' not in page.text  # the form and the error, no rows
    api = httpx.get(f"{url}/api/incidents?{query}")
    assert api.status_code == 400 and message.replace("&#39;", "'") in api.json()["error"]
    # the app keeps serving
    assert httpx.get(f"{url}/?page=1&per_page=500&since=36500d").status_code == 200


def test_huge_incident_id_is_404(store, serve_review):
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice"}))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for incident_id in ("99999999999999999999", str(2**63), "0", "-1"):
        page = httpx.get(f"{url}/incidents/{incident_id}", headers=bearer)
        assert page.status_code == 404 and f"no incident with id {incident_id}" in page.text
        api = httpx.get(f"{url}/api/incidents/{incident_id}", headers=bearer)
        assert api.status_code == 404 and api.json() == {"error": f"no incident with id {incident_id}"}
        action = httpx.post(f"{url}/api/incidents/{incident_id}/claim", headers=bearer, json={})
        assert action.status_code == 404
        form = httpx.post(f"{url}/incidents/{incident_id}", headers=bearer, data={"action": "claim"})
        assert form.status_code == 404
    assert httpx.get(f"{url}/api/incidents/{2**63 - 1}", headers=bearer).status_code == 404  # the largest id
    assert httpx.get(f"{url}/api/incidents/1", headers=bearer).status_code == 200


def test_logout_needs_the_csrf_token(store, serve_review):
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice"}))
    with httpx.Client(base_url=url) as browser:
        assert browser.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
        html = browser.get("/").text
        # the sign-out form on every page carries the token
        assert re.search(r'action="/logout"[^>]*><input type="hidden" name="csrf" value="[0-9a-f]{40}"', html)
        for forged in ({}, {"csrf": "0" * 40}):
            refused = browser.post("/logout", data=forged)
            assert refused.status_code == 403 and "set-cookie" not in refused.headers
            assert browser.get("/").status_code == 200  # still signed in
        out = browser.post("/logout", data={"csrf": csrf(html)})
        assert out.status_code == 303 and out.headers["location"] == "/login"
        assert browser.get("/").status_code == 303  # signed out: back to /login
        # signing out without a session needs no token (there is nothing to forge)
        assert browser.post("/logout").status_code == 303
