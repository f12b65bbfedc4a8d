"""Accessibility and narrow windows in a real headless Chromium (Playwright): axe-core finds no serious
or critical violation on the queue, a generation and an incident page; the heatmap tabs switch without
JavaScript (links the server answers) and, with it, by arrow keys (WAI-ARIA tabs); tokens take focus and
show their score; a skip link; no page scrolls sideways at 800 px, long values included."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from probewatch.server.review.auth import AuthConfig
from tests.server.review.helpers import seed, seed_grouped

pytestmark = pytest.mark.timeout(120)
AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
WIDE = "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"


@pytest.fixture
def store(store):
    seed(store, 3)
    seed_grouped(store, 2, text="a-very-long-unbroken-value-" * 12)  # a 324-character unbroken response
    return store


def _axe(page) -> list[dict]:
    page.add_script_tag(path=str(AXE))
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "nodes": [n["target"] for n in v["nodes"]][:3]}
        for v in result
        if v["impact"] in ("serious", "critical")
    ]


def test_axe_finds_no_serious_violations(store, serve_review, browser):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    try:
        incident = store.generation_incidents("grp-1")[0]
        for path in ("/", "/generations/grp-1", f"/incidents/{incident.id}", "/?score_min=abc"):
            page.goto(f"{url}{path}")
            assert _axe(page) == [], path
    finally:
        page.close()


def test_no_sideways_scroll_at_800_px(store, serve_review, browser):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = browser.new_page(viewport={"width": 800, "height": 900})
    try:
        incident = store.generation_incidents("grp-1")[0]
        for path in (
            "/",
            "/?per_page=250&sort=margin_desc",
            "/generations/grp-1",
            f"/incidents/{incident.id}",
            "/nope",
        ):
            page.goto(f"{url}{path}")
            scroll, client = page.evaluate(WIDE)
            assert client >= 780 and scroll <= client, f"{path}: {scroll} > {client}"
        page.goto(f"{url}/generations/grp-1")
        # the 324-character unbroken response wraps inside its card; prose wraps between words only
        pre = page.locator(".msg.role-assistant pre")
        assert pre.evaluate("e => getComputedStyle(e).overflowWrap") == "anywhere"
        assert pre.evaluate("e => e.getBoundingClientRect().right") <= 800
        style = "e => [getComputedStyle(e).overflowWrap, getComputedStyle(e).wordBreak]"
        assert page.locator(".probe-card .guidance p").first.evaluate(style) == ["normal", "normal"]
    finally:
        page.close()


def test_tabs_switch_without_javascript(store, serve_review, browser):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    context = browser.new_context(java_script_enabled=False, viewport={"width": 1300, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{url}/generations/grp-1")
        assert page.evaluate("() => document.documentElement.classList.contains('js')") is False
        tabs = page.locator('.probe-tabs [role="tab"]')
        assert tabs.count() == 3
        first, second = tabs.nth(0), tabs.nth(1)
        assert first.get_attribute("aria-selected") == "true" and second.get_attribute("aria-selected") == "false"
        target = second.get_attribute("aria-controls")
        probe = page.locator(f"#{target}").get_attribute("data-probe")
        assert not page.locator(f".heatmap[data-probe='{probe}']").is_visible()
        second.click()
        page.wait_for_url(re.compile(rf"probe={re.escape(probe)}"))
        shown = page.locator(".heatmap:visible")
        assert shown.count() == 1 and shown.get_attribute("data-probe") == probe
        selected = page.locator('[role="tab"][aria-selected="true"]')
        assert selected.count() == 1 and probe in selected.inner_text()
        # every scored token is a Tab stop with its score in its title (the score shows on focus, CSS only)
        tok = page.locator(".heatmap:visible .tok[data-score]").first
        assert tok.get_attribute("tabindex") == "0" and "score" in tok.get_attribute("title")
    finally:
        context.close()


def test_keyboard_tabs_tokens_and_skip_link(store, serve_review, browser):
    url = serve_review(store, AuthConfig(local_reviewer="alice"))
    page = browser.new_page(viewport={"width": 1300, "height": 900})
    try:
        page.goto(f"{url}/generations/grp-1")
        page.keyboard.press("Tab")
        skip = page.evaluate("() => [document.activeElement.textContent, document.activeElement.getAttribute('href')]")
        assert skip == ["Skip to content", "#content"]
        page.keyboard.press("Enter")
        assert page.evaluate("() => document.activeElement.id") == "content"
        # tabs: one Tab stop, arrow keys move and select
        tabs = page.locator('[role="tab"]')
        assert [tabs.nth(k).get_attribute("tabindex") for k in range(3)] == ["0", "-1", "-1"]
        tabs.nth(0).focus()
        page.keyboard.press("ArrowRight")
        assert page.evaluate("() => document.activeElement.id") == tabs.nth(1).get_attribute("id")
        assert (
            tabs.nth(1).get_attribute("aria-selected") == "true"
            and tabs.nth(0).get_attribute("aria-selected") == "false"
        )
        panel = page.locator("#" + tabs.nth(1).get_attribute("aria-controls"))
        assert panel.is_visible() and page.locator(".heatmap:visible").count() == 1
        page.keyboard.press("End")
        assert tabs.nth(2).get_attribute("aria-selected") == "true"
        page.keyboard.press("Home")
        assert tabs.nth(0).get_attribute("aria-selected") == "true"
        # tokens: Tab from the tab list reaches the heatmap's tokens (one stop: the first hot one), arrows move
        page.keyboard.press("Tab")
        focused = page.evaluate("() => [document.activeElement.className, document.activeElement.dataset.pos]")
        assert focused[0].startswith("tok") and "hot" in focused[0]
        assert "score" in page.locator("#tip").inner_text() and page.locator("#tip").is_visible()
        page.keyboard.press("ArrowLeft")
        assert page.evaluate("() => document.activeElement.dataset.pos") == str(int(focused[1]) - 1)
    finally:
        page.close()
