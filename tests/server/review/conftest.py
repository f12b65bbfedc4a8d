"""Review-app fixtures: a store with incidents, the app on a loopback port, and one headless Chromium
per session (Debian's /usr/bin/chromium driven by Playwright; deploy/scripts/ensure-chromium.sh)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest

from tests.components import missing

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture
def serve_review() -> Iterator[Callable]:
    """serve_review(store, auth, catalog=None) -> base URL of the review app on 127.0.0.1 (stopped at teardown)."""
    from probewatch.server.inference.server_thread import HTTPServerThread
    from probewatch.server.review.app import create_review_app

    servers = []

    def start(store, auth, catalog=None, metrics_cache_s: float = 0.0) -> str:
        app = create_review_app(store, auth, catalog, metrics_cache_s=metrics_cache_s)
        server = HTTPServerThread(app, "127.0.0.1", 0, proxy_headers=False).start()
        servers.append(server)
        return server.url

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def browser():
    """One Chromium for the whole session (each test opens its own page/context)."""
    if not os.access(CHROMIUM, os.X_OK):
        missing(f"{CHROMIUM} not installed (make test installs it: deploy/scripts/ensure-chromium.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def store(tmp_path):
    """An empty SQLite incident store (modules that want rows override it: `def store(store): seed(store, n)`)."""
    from probewatch.server.store import IncidentStore

    s = IncidentStore.open(tmp_path / "incidents.sqlite3")
    yield s
    s.close()
