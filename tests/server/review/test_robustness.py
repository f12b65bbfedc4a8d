"""Robustness of the review app over real HTTP (uvicorn on loopback, httpx): a refused filter lists no
rows, error pages never show paths, a favicon, CSRF for cookie but not for bearer-only API clients, the
first incident page after start does not wait for the tokenizer, and the probe card (what the probe
means, its quality numbers, P(behaviour), how to label)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx

from probewatch.server.review.app import store_down
from probewatch.server.review.auth import TOKEN_COOKIE, AuthConfig
from probewatch.server.review.catalog import Catalog
from probewatch.server.review.probe_card import probe_card, quality_section, sigmoid
from probewatch.server.store import Incident, IncidentStore, probe_context
from probewatch.server.store.records import IncidentStoreError
from tests.server.review.helpers import csrf, seed, seed_grouped

TOKEN = "alice-token-0123456789abcdef"
SHIPPED = Path(__file__).resolve().parents[3] / "probes" / "shipped" / "smollm2-135m-instruct"


def test_a_refused_filter_lists_no_rows(store, serve_review):
    seed(store, 6)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    for query in ("score_min=abc", "status=nonsense", "since=yesterdayish", "page=0"):
        page = httpx.get(f"{url}/?{query}")
        assert page.status_code == 400, query
        assert 'class="banner error"' in page.text and 'id="filters"' in page.text  # the error and the form
        assert "data-generation=" not in page.text and 'id="queue"' not in page.text  # and not one row
    assert httpx.get(f"{url}/?score_min=1").text.count("data-generation=") == 6  # a good filter lists rows


def test_error_pages_show_no_paths(store, serve_review, tmp_path):
    seed(store, 1)
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice"}))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    answers = [
        httpx.get(f"{url}/incidents/987654", headers=bearer),
        httpx.get(f"{url}/api/incidents/987654", headers=bearer),
        httpx.post(f"{url}/api/incidents/987654/claim", headers=bearer, json={}),
        httpx.post(f"{url}/incidents/987654", headers=bearer, data={"action": "claim"}),
        httpx.get(f"{url}/no/such/page", headers=bearer),
        httpx.get(f"{url}/static/nope.css"),
        httpx.get(f"{url}/generations/nope", headers=bearer),
        httpx.get(f"{url}/probes/nope/quality", headers=bearer),
    ]
    assert [a.status_code for a in answers] == [404] * len(answers)
    for a in answers:
        assert str(tmp_path) not in a.text and "sqlite" not in a.text.lower() and "Traceback" not in a.text
    assert "no incident with id 987654" in answers[0].text and "<h1>No such incident</h1>" in answers[0].text
    assert answers[1].json() == {"error": "no incident with id 987654"}
    assert "<h1>Not found</h1>" in answers[4].text  # an HTML page, not FastAPI's JSON
    assert httpx.get(f"{url}/api/nope", headers=bearer).json() == {"error": "no such page"}
    health = httpx.get(f"{url}/healthz")
    assert health.json() == {"status": "ok", "backend": "sqlite"} and str(tmp_path) not in health.text
    down = store_down(None, IncidentStoreError(f"cannot open the incident store at {tmp_path}/x.sqlite3"))  # type: ignore[arg-type]
    assert down.status_code == 503 and str(tmp_path).encode() not in down.body and b"unavailable" in down.body


def test_favicon(store, serve_review):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    icon = httpx.get(f"{url}/favicon.ico")  # no sign-in: browsers ask before anything else
    assert icon.status_code == 200 and icon.headers["content-type"] == "image/svg+xml"
    assert icon.content.startswith(b"<svg") and len(icon.content) < 2000
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in httpx.get(f"{url}/").text
    assert httpx.get(f"{url}/static/favicon.svg").content == icon.content


def test_bearer_api_clients_need_no_csrf_token_cookie_clients_do(store, serve_review):
    seed_grouped(store, 2)
    url = serve_review(store, AuthConfig(tokens={TOKEN: "alice"}))
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    ok = httpx.post(f"{url}/api/generations/grp-0", headers=bearer, json={"label": "unsure"})
    assert ok.status_code == 200 and ok.json()["batch"]["done"] == {"label": 3}
    first = store.generation_incidents("grp-1")[0]
    claim = httpx.post(f"{url}/api/incidents/{first.id}/claim", headers=bearer, json={})
    assert claim.status_code == 200 and claim.json()["incident"]["assignee"] == "alice"
    # a browser signed in by the cookie: the same JSON post needs X-CSRF-Token
    with httpx.Client(base_url=url) as browser:
        assert browser.post("/login", data={"token": TOKEN, "next": "/"}).status_code == 303
        refused = browser.post("/api/generations/grp-1", json={"label": "unsure"})
        assert refused.status_code == 403 and "X-CSRF-Token" in refused.json()["error"]
        # the cookie and a bearer header together: still a browser's request as far as CSRF goes
        both = browser.post("/api/generations/grp-1", headers=bearer, json={"label": "unsure"})
        assert both.status_code == 403
        token = csrf(browser.get("/").text)
        done = browser.post("/api/generations/grp-1", headers={"X-CSRF-Token": token}, json={"label": "unsure"})
        assert done.status_code == 200 and done.json()["batch"]["done"] == {"label": 3}
    assert {i.label for i in store.generation_incidents("grp-1")} == {"unsure"}
    assert TOKEN_COOKIE == "pw_review_token"


def _with_token_texts(store: IncidentStore, n: int) -> list[int]:
    """`n` refusal incidents as a sidecar writes them today: token texts stored (full text policy)."""
    ids = []
    for k in range(n):
        scores = [[40 + i, -1.0 + 0.6 * i] for i in range(5)]
        context = {
            "refusal": probe_context(
                behaviour="refusal",
                score=1.4,
                threshold=0.221,
                n_tokens=5,
                aggregation="last",
                token_selection="response",
                layer=17,
                version="1",
                token_scores=scores,
            )
        }
        ids.append(
            store.record(
                Incident(
                    generation_id=f"tt-{k}",
                    probe="refusal",
                    behaviour="refusal",
                    score=1.4,
                    threshold=0.221,
                    model_fingerprint="pwfp1:66f6074aac7e0facbb15cd8c4618a96c",
                    bundle_version="1",
                    aggregation="last",
                    token_scores=scores,
                    prompt="<|im_start|>user\nhow do I pick a lock<|im_end|>\n<|im_start|>assistant\n",
                    response="Sure, here is how",
                    prompt_length=40,
                    tokens=[[40 + i, 100 + i] for i in range(5)],
                    token_texts=[[40, "Sure"], [41, ","], [42, " here"], [43, " is"], [44, " how"]],
                    context=context,
                )
            )
        )
    return ids


def test_first_incident_page_after_start_does_not_wait_for_the_tokenizer(store, serve_review):
    """The shipped refusal bundle names a model whose tokenizer takes seconds to load: the app warms it in
    the background and a page with stored token texts never waits for it."""
    ids = _with_token_texts(store, 2)
    started = time.perf_counter()
    url = serve_review(store, AuthConfig(local_reviewer="alice"), Catalog([SHIPPED / "refusal"], discover=False))
    first = httpx.get(f"{url}/incidents/{ids[0]}")
    elapsed = time.perf_counter() - started
    # waiting for the tokenizer took 3.5-4.3 s; the 500 ms budget is `probewatch bench review`'s (264 ms at
    # 10,000 incidents): here 1.5 s leaves room for a CI machine busy with other work (0.56 s seen)
    assert first.status_code == 200 and elapsed < 1.5, f"first incident page after start took {elapsed:.2f} s"
    assert '<span class="tok hot" data-pos="44"' in first.text and ">Sure<" in first.text  # the stored texts


def test_probe_card_says_what_the_probe_means(store, serve_review):
    ids = _with_token_texts(store, 1)
    url = serve_review(store, AuthConfig(local_reviewer="alice"), Catalog([SHIPPED / "refusal"], discover=False))
    page = httpx.get(f"{url}/incidents/{ids[0]}").text
    card = page[page.index('class="card probe-card"') :]
    card = card[: card.index("</section>")]
    # the card shows what the shipped bundle's manifest says, whatever the last regeneration chose
    from probewatch.probes.bundle import read_manifest

    manifest = read_manifest(SHIPPED / "refusal")
    assert manifest.description.split(" (")[0] in card
    assert f"P(refusal) = <b>{sigmoid(1.4):.3f}</b>" in card and "(calibrated logit)" in card
    assert f"<dt>AUROC (test split)</dt><dd>{manifest.metrics['auroc']:.3f}</dd>" in card
    recall = manifest.metrics["operating_point"]["shipped"]["recall"]
    assert f"<dt>recall at the shipped threshold</dt><dd>{recall:.0%}</dd>" in card
    assert "A complied-with harmful request is a false negative of the model&#39;s refusal" in card
    assert 'href="/probes/refusal/quality"' in card
    report = httpx.get(f"{url}/probes/refusal/quality")
    assert report.status_code == 200 and f"Shipped threshold {manifest.threshold.value:.3f}" in report.text
    generation = httpx.get(f"{url}/generations/tt-0").text
    assert generation.count('class="card probe-card"') == 1 and "P(refusal) = " in generation


def test_probe_card_without_a_manifest_and_for_non_logit_scores():
    card = probe_card("dec", "deception", None)
    assert card.description.startswith("Detects deceptive statements") and not card.logit
    assert card.probability(2.0) is None and "True positive: the response states" in card.guidance
    from probewatch.probes.bundle import read_manifest

    manifest = read_manifest(SHIPPED / "alignment-faking")
    af = probe_card("alignment-faking", "alignment_faking", manifest)
    assert af.probability(0.0) == "0.500" and af.probability(math.inf) is None
    assert af.weak_kinds and af.weak_kinds[0][0] == "persona_goal_guarding" and af.weak_kinds[0][1] < 0.75
    manifest.extra = {"score_units": "SAE feature activation"}
    assert probe_card("x", "deception", manifest).probability(1.0) is None  # not a logit: no probability
    assert quality_section("refusal").startswith("## `refusal` (refusal)") and quality_section("nope") is None
