"""What every client of the store shares: the location, the engine, opening (create, migrate, prove a
write), one-transaction read and write connections, and the store's own secrets (not the pseudonym
key: that lives outside the database, server/store/pseudonym_keys.py).

Every write is one transaction that commits before the call returns, except inside `batch()`: there
the calls of one thread share one transaction (one commit, one fsync, one lock) and each write runs in
its own SAVEPOINT, so a refused action rolls back alone and the others still commit. Thread-safe:
SQLAlchemy's pool hands each call (or each thread's batch) its own connection.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from sqlalchemy import Connection, Engine, delete, select
from sqlalchemy.exc import SQLAlchemyError

from probewatch.server.store import connect, migrate
from probewatch.server.store.location import StoreLocation, parse_location
from probewatch.server.store.privacy import DEFAULT_MAX_CHARS, TextPolicy
from probewatch.server.store.pseudonym_keys import read_key_file, store_key
from probewatch.server.store.records import IncidentStoreError
from probewatch.server.store.tables import store_meta

log = logging.getLogger(__name__)

LEGACY_KEY = "pseudonym_key"  # the store_meta row an older probewatch kept the pseudonym key in


class StoreCore:
    """The connection core the writer, review and query clients share (see `store.IncidentStore`)."""

    def __init__(
        self,
        location: StoreLocation,
        engine: Engine,
        readonly: bool = False,
        policy: TextPolicy | None = None,
        writer: str | None = None,
    ) -> None:
        self.location = location
        self.engine = engine
        self.readonly = readonly
        self.policy: TextPolicy = policy or TextPolicy("full")
        self.writer = writer or socket.gethostname()
        self._insert = _dialect_insert(engine.dialect.name)
        self._batch = threading.local()  # .conn: this thread's batch connection (see `batch`)

    @property
    def path(self) -> Path | str:
        """The SQLite file, or the database URL with its password masked (for messages)."""
        return self.location.path if self.location.path is not None else self.location.display

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    @classmethod
    def open(
        cls,
        location: str | Path,
        readonly: bool = False,
        store_text: str = "full",
        max_text_chars: int = DEFAULT_MAX_CHARS,
        policy: TextPolicy | None = None,
        writer: str | None = None,
        pseudonym_key_file: Path | None = None,
        private_metadata_keys: Sequence[str] = (),
    ) -> Self:
        """Open (creating and migrating when needed) the store at a SQLite path or a database URL.

        Writers (readonly=False) create the store, upgrade its schema and prove it takes a write
        now, so a bad location is a start-up error rather than alerts lost later. Readers never
        create or migrate. `store_text` / `policy`: what rows keep of prompts and responses;
        `pseudonym_key_file`: the key file of metadata pseudonyms (default: next to a SQLite store);
        `private_metadata_keys`: patterns of metadata keys pseudonymised beyond the built-in ones.
        """
        loc = parse_location(location)
        try:
            text_policy = policy or TextPolicy(
                store_text, max_chars=max_text_chars, private_keys=tuple(private_metadata_keys)
            )
        except ValueError as exc:
            raise IncidentStoreError(str(exc)) from None
        if pseudonym_key_file is not None:
            read_key_file(pseudonym_key_file)  # a bad key file fails before the store is touched
        store = cls(loc, _open_engine(loc, readonly), readonly=readonly, policy=text_policy, writer=writer)
        if policy is None and not readonly and (text_policy.mode != "full" or pseudonym_key_file is not None):
            # one key for every replica: a user's pseudonym is the same in all rows (readers make none)
            text_policy.key = store_key(loc, pseudonym_key_file, store.legacy_pseudonym_key())
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Run this thread's store calls in one write transaction (bulk review actions: 50 generations
        are hundreds of audited writes; one commit instead of one each). Nested batches join the outer one."""
        if self.readonly:
            raise IncidentStoreError(f"the incident store at {self.location.display} is open read-only")
        if getattr(self._batch, "conn", None) is not None:
            yield
            return
        with self.engine.connect().execution_options(**connect.WRITE) as conn, conn.begin():
            self._batch.conn = conn
            try:
                yield
            finally:
                self._batch.conn = None

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self.readonly:
            raise IncidentStoreError(f"the incident store at {self.location.display} is open read-only")
        shared: Connection | None = getattr(self._batch, "conn", None)
        if shared is not None:
            with shared.begin_nested():
                yield shared
            return
        with self.engine.connect().execution_options(**connect.WRITE) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        shared: Connection | None = getattr(self._batch, "conn", None)
        if shared is not None:  # inside a batch: read what it has written so far
            yield shared
            return
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the store (made on first use; every process and replica shares it)."""
        with self._write() as conn:
            stmt = self._insert(store_meta).values(key=name, value=os.urandom(32).hex())
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[store_meta.c.key]))
            value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == name)).scalar_one()
        return bytes.fromhex(value)

    def legacy_pseudonym_key(self) -> bytes | None:
        """The pseudonym key an older probewatch kept in the database (None: there is none). Read only:
        a key is never written there now (anyone with a copy of the database could undo the pseudonyms)."""
        with self._read() as conn:
            value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == LEGACY_KEY)).scalar()
        return bytes.fromhex(value) if value else None

    def drop_legacy_pseudonym_key(self) -> bool:
        """Delete the database's copy of the pseudonym key (after `probewatch incidents move-key` saved it)."""
        with self._write() as conn:
            return bool(conn.execute(delete(store_meta).where(store_meta.c.key == LEGACY_KEY)).rowcount)


def _open_engine(loc: StoreLocation, readonly: bool) -> Engine:
    """An engine on a store that is there and current; a writer's is migrated and proven to take a write."""
    where = loc.display
    hint = "(pass a writable --incident-db PATH or URL, or set PROBEWATCH_INCIDENT_DB)"
    engine = None
    try:
        if loc.path is not None:
            _prepare_sqlite_file(loc.path, readonly)
        engine = connect.make_engine(loc, readonly=readonly)
        if readonly:
            migrate.check_current(engine, where)
        else:
            before = migrate.upgrade(engine, where)
            if before and before != migrate.head_revision():
                log.info("incident store %s upgraded from schema %s to %s", where, before, migrate.head_revision())
            with engine.connect().execution_options(**connect.WRITE) as conn, conn.begin():
                pass  # a write transaction: proves the lock can be taken now (read-only mounts, permissions)
            if loc.path is not None:
                connect.private_file(loc.path)  # the -wal/-shm files exist now: none wider than the database
    except IncidentStoreError:
        if engine is not None:
            engine.dispose()
        raise
    except (OSError, SQLAlchemyError) as exc:
        if engine is not None:
            engine.dispose()
        raise IncidentStoreError(f"cannot open the incident store at {where}: {_reason(exc)} {hint}") from exc
    return engine


def _reason(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy's wrapper adds the statement and a docs link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _dialect_insert(name: str) -> Any:
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert
    if name == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    raise IncidentStoreError(f"unsupported database backend {name!r}")


def _prepare_sqlite_file(path: Path, readonly: bool) -> None:
    if readonly:
        if not path.is_file():
            raise IncidentStoreError(
                f"no incident store at {path} (the sidecar creates it on startup; pass --db or set PROBEWATCH_INCIDENT_DB)"
            )
        return
    if path.is_dir():
        raise IncidentStoreError(f"incident store path {path} is a directory; pass a file path")
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    connect.private_file(path)
