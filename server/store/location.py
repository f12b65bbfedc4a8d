"""Where an incident store lives: a SQLite file path, or a database URL (PostgreSQL for a fleet).

`PROBEWATCH_INCIDENT_DB`, `--incident-db` and `--db` take either. A value with `://` is a URL
(`postgresql://user@host/db`, `postgresql+psycopg://...`, `sqlite:///path`); anything else is a
file path. Plain `postgresql://` / `postgres://` URLs get the psycopg 3 driver (the one we ship).
Passwords never appear in messages: `display` masks them (prefer libpq's PGPASSWORD or a
Kubernetes Secret holding the whole URL over a password on a command line).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from probewatch.server.store.records import IncidentStoreError

_DRIVERS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}


@dataclass(frozen=True)
class StoreLocation:
    url: URL
    path: Path | None  # the SQLite file (None: a server database)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def display(self) -> str:
        """The location for messages: the file path, or the URL with its password masked."""
        if self.path is not None:
            return str(self.path)
        return self.url.render_as_string(hide_password=True)

    def __str__(self) -> str:
        return self.display


def parse_location(value: str | Path) -> StoreLocation:
    """A path or URL as a StoreLocation; IncidentStoreError names what is wrong with a bad URL."""
    if isinstance(value, Path) or "://" not in str(value):
        path = Path(value).expanduser()
        return StoreLocation(URL.create("sqlite+pysqlite", database=str(path)), path)
    text = str(value).strip()
    scheme, rest = text.split("://", 1)
    text = f"{_DRIVERS.get(scheme, scheme)}://{rest}"
    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise IncidentStoreError(f"malformed incident store URL: {exc}") from exc
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise IncidentStoreError("a sqlite:/// incident store URL needs a file path (sqlite:////abs/path.sqlite3)")
        path = Path(url.database).expanduser()
        return StoreLocation(URL.create("sqlite+pysqlite", database=str(path)), path)
    if backend != "postgresql":
        raise IncidentStoreError(
            f"unsupported incident store URL scheme {scheme!r}: use a SQLite file path or a postgresql:// URL"
        )
    if not url.database:
        raise IncidentStoreError(
            f"incident store URL {url.render_as_string(hide_password=True)} names no database (postgresql://host/DBNAME)"
        )
    return StoreLocation(url, None)
