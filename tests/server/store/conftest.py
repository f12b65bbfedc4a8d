"""Fixtures of the store tests: one PostgreSQL cluster per session, and `store_location`, which runs
each test body once on SQLite and once on PostgreSQL (a fresh database each time)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.components import missing
from tests.server.store.pg import PostgresServer, server_bin


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    if server_bin() is None:
        missing(
            "PostgreSQL server binaries not installed (make test installs them: deploy/scripts/ensure-postgresql.sh)"
        )
    server = PostgresServer()
    try:
        server.start()
    except BaseException:
        server.stop()
        raise
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _private_home(tmp_path, monkeypatch) -> None:
    """A PostgreSQL store opened without --pseudonym-key-file keeps its key file in PROBEWATCH_HOME:
    this test's, never the user's (sidecar subprocesses inherit it)."""
    monkeypatch.setenv("PROBEWATCH_HOME", str(tmp_path / "home"))


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request, tmp_path) -> str:
    """Where a test's store lives: a SQLite file, or the URL of a new PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "incidents.sqlite3")
    return request.getfixturevalue("postgres").create_database()
