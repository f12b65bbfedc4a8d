"""Clearing a queue in a real headless Chromium (Playwright): a generation with three probes labelled at
once ("same for all"), bulk label + resolve of 50 rows, a keyboard-only review of 10 generations (focus
moves, shortcuts shown), text search, sort and the export download, the Grafana link. No model needed:
incidents are written through the store API as the sidecar writes them."""

from __future__ import annotations

import json
import re
from urllib.parse import parse_qs, urlsplit

import pytest

from probewatch.server.review.auth import AuthConfig
from probewatch.server.review.grafana import DASHBOARD_UID
from tests.server.review.helpers import seed, seed_grouped

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def page(browser):
    p = browser.new_page(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    yield p
    p.close()


def _focused_generation(page) -> str | None:
    return page.evaluate(
        "() => { const r = document.activeElement.closest('tr.row'); return r && r.dataset.generation; }"
    )


def test_a_generation_with_three_probes_is_labelled_at_once(store, serve_review, page, monkeypatch):
    monkeypatch.setenv("PROBEWATCH_GRAFANA_URL", "https://grafana.example.com")
    seed_grouped(store, 2)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page.goto(f"{url}/")
    row = page.locator('tr.row[data-generation="grp-1"]')
    assert page.locator("tr.row").count() == 2  # six incidents, two rows
    assert row.locator(".badge .probe").all_inner_texts() == ["ref", "dec", "dec-sae"]  # highest score first
    assert row.locator(".badge .score").all_inner_texts() == ["+2.750", "+2.500", "+2.500"]
    row.locator("td.snippet").click()
    page.wait_for_url(re.compile(r"/generations/grp-1"))
    href = page.locator("#grafana-link").get_attribute("href")
    query = parse_qs(urlsplit(href).query)
    assert href.startswith(f"https://grafana.example.com/d/{DASHBOARD_UID}?")
    assert int(query["to"][0]) - int(query["from"][0]) == 30 * 60 * 1000 and query["var-probe"] == [
        "ref",
        "dec",
        "dec-sae",
    ]
    assert page.locator("#review-form tr[data-incident]").count() == 3
    page.check('input[name="label_all"][value="false_positive"]')
    page.fill('#review-form textarea[name="comment"]', "a benign answer")
    page.click("#save-resolve")
    page.wait_for_url(re.compile(r"done="))
    assert "labelled 3, resolved 3" in page.locator(".banner.ok").inner_text()
    assert page.locator("#review-form .pill.false_positive").count() == 3
    assert page.locator("#timeline").inner_text().count("labelled false positive") == 3
    rows = store.generation_incidents("grp-1")
    assert {(i.probe, i.label, i.status) for i in rows} == {
        (p, "false_positive", "resolved") for p in ("ref", "dec", "dec-sae")
    }
    assert all([e.action for e in store.events(int(i.id))] == ["label", "resolve"] for i in rows)


def test_bulk_label_and_resolve_of_fifty_rows(store, serve_review, page):
    seed(store, 55)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page.goto(f"{url}/?per_page=50")
    assert page.locator("tr.row").count() == 50
    page.check("#select-all")
    assert page.locator("#selected-count").inner_text() == "50 selected"
    page.select_option("#bulk-label", "true_positive")
    page.check("#bulk-resolve")
    page.click("#bulk-apply")
    page.wait_for_url(re.compile(r"done="))
    picked = [f"gen-{k}" for k in range(5, 55)]
    rows = [i for g in picked for i in store.find(generation_id=g)]
    assert len(rows) == 50 + sum(k % 3 == 0 for k in range(5, 55))
    assert f"50 generation(s): labelled {len(rows)}, resolved {len(rows)}" in page.locator(".banner.ok").inner_text()
    assert all((i.label, i.status) == ("true_positive", "resolved") for i in rows)
    assert all([e.action for e in store.events(int(i.id))] == ["label", "resolve"] for i in rows)
    assert all(i.status == "open" for k in range(5) for i in store.find(generation_id=f"gen-{k}"))


def test_keyboard_only_review_of_ten_generations(store, serve_review, page):
    seed(store, 10)  # 10 generations, 14 incidents
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page.goto(f"{url}/?status=unresolved")
    assert page.locator("#shortcut-hint").is_visible()
    page.keyboard.press("?")
    assert (
        page.locator("#help").is_visible()
        and "focus the next / previous generation" in page.locator("#help").inner_text()
    )
    page.keyboard.press("Escape")
    assert not page.locator("#help").is_visible()
    page.keyboard.press("j")
    assert _focused_generation(page) == "gen-9"
    assert page.evaluate("document.activeElement.matches('a.open')")  # real focus on the row's link
    page.keyboard.press("j")
    page.keyboard.press("j")
    assert _focused_generation(page) == "gen-7"
    page.keyboard.press("k")
    assert _focused_generation(page) == "gen-8"
    page.keyboard.press("k")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"/generations/gen-9\?status=unresolved"))
    for k in range(9, -1, -1):
        assert f"/generations/gen-{k}?" in page.url
        page.keyboard.press("1")
        assert page.evaluate("document.activeElement.id") == "save-next"
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(rf"/generations/gen-{k - 1}\?" if k else r"/\?status=unresolved&done="))
    assert "no more generations in this queue" in page.locator(".banner.ok").inner_text()
    assert page.locator("tr.row").count() == 0
    done = store.find(limit=100)
    assert len(done) == 14 and all((i.label, i.status) == ("true_positive", "resolved") for i in done)


def test_search_sort_and_export_download(store, serve_review, page, tmp_path):
    seed(store, 12)
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page.goto(f"{url}/")
    page.fill("#search", "number 1")
    page.keyboard.press("Enter")
    page.wait_for_url(re.compile(r"q=number\+1"))
    assert page.locator("tr.row").evaluate_all("rs => rs.map(r => r.dataset.generation)") == [
        "gen-11",
        "gen-10",
        "gen-1",
    ]
    page.select_option("#sort", "score_desc")  # applies on change, kept in the URL with the search
    page.wait_for_url(re.compile(r"sort=score_desc"))
    assert "q=number+1" in page.url and page.locator("#search").input_value() == "number 1"
    tops = [max(i.score for i in store.find(generation_id=g)) for g in ("gen-11", "gen-10", "gen-1")]
    shown = page.locator("tr.row").evaluate_all("rs => rs.map(r => r.dataset.generation)")
    assert [max(i.score for i in store.find(generation_id=g)) for g in shown] == sorted(tops, reverse=True)
    with page.expect_download() as info:
        page.click("#export-link")
    path = tmp_path / "export.jsonl"
    info.value.save_as(path)
    assert info.value.suggested_filename.startswith("probewatch-incidents-")
    records = [json.loads(x) for x in path.read_text().splitlines()]
    assert sorted({r["generation_id"] for r in records}) == ["gen-1", "gen-10", "gen-11"]
    assert len(records) == sum(len(store.find(generation_id=g)) for g in ("gen-1", "gen-10", "gen-11"))
