"""SQLAlchemy engines for the incident store, with the settings each backend needs.

SQLite (the embedded default: one sidecar with a volume): WAL, so `probewatch incidents` and the
review app read while the sidecar writes; `synchronous=NORMAL` (with WAL a commit survives a
process crash); `secure_delete` (deleted rows are overwritten, not left in free pages); a busy
timeout; foreign keys on. pysqlite's own transaction handling is switched off and SQLAlchemy's
`begin` emits `BEGIN`, or `BEGIN IMMEDIATE` for writes (`WRITE` execution option): a write
transaction takes the write lock up front instead of failing with "database is locked" when it
upgrades a read snapshot another writer moved past. The file is created 0600 (it holds prompts
and responses) in a 0700 folder when the folder is new.

PostgreSQL (a fleet of sidecars, one review app): psycopg 3, a small pool with pre-ping (pods
outlive database restarts and failovers), read-only sessions for readers.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from sqlalchemy import URL, Engine, create_engine, event

from probewatch.server.store.location import StoreLocation

log = logging.getLogger(__name__)

FILE_MODE = 0o600
#: execution option that makes a SQLite transaction BEGIN IMMEDIATE (take the write lock first)
WRITE = {"probewatch_write": True}


def open_private(path: Path):
    """A text file for writing with mode 0600 from its creation (exports carry incident text, like the store)."""
    if path.exists() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        os.chmod(path, FILE_MODE)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, FILE_MODE)
    return os.fdopen(fd, "w", encoding="utf-8")


def private_file(path: Path) -> None:
    """Create `path` with mode 0600, or narrow an existing one (and its -wal/-shm) to 0600."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE)
        os.close(fd)
    for p in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        try:
            if p.exists() and stat.S_IMODE(p.stat().st_mode) & 0o077:
                os.chmod(p, FILE_MODE)
        except PermissionError:
            log.warning("incident store file %s is readable by others and not ours to chmod", p)


def make_engine(location: StoreLocation, readonly: bool = False, pool_size: int = 4) -> Engine:
    if location.is_sqlite:
        return _sqlite_engine(location, readonly)
    connect_args: dict = {"connect_timeout": 10, "application_name": "probewatch"}
    if readonly:
        connect_args["options"] = "-c default_transaction_read_only=on"
    return create_engine(
        location.url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _sqlite_engine(location: StoreLocation, readonly: bool) -> Engine:
    path = location.path
    assert path is not None
    if readonly:
        url = URL.create("sqlite+pysqlite", database=f"file:{path}", query={"mode": "ro", "uri": "true"})
    else:
        url = URL.create("sqlite+pysqlite", database=str(path))
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:
        dbapi_conn.isolation_level = None  # SQLAlchemy's begin event below issues BEGIN itself
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.execute("PRAGMA foreign_keys = ON")
        if not readonly:
            cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")
            cur.execute("PRAGMA secure_delete = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        write = conn.get_execution_options().get("probewatch_write")
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write and not readonly else "BEGIN")

    return engine
