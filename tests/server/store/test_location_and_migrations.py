"""Store locations (paths and URLs), start-up errors, and the upgrade of stores written before migrations."""

from __future__ import annotations

import sqlite3

import pytest

from probewatch.server.store import Incident, IncidentStore, IncidentStoreError, parse_location

# The table exactly as probewatch created it before the store had migrations (schema of 2026-11).
LEGACY_SCHEMA = """
CREATE TABLE incidents (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, generation_id TEXT NOT NULL,
    probe TEXT NOT NULL, behaviour TEXT NOT NULL, score REAL NOT NULL, threshold REAL NOT NULL,
    aggregation TEXT NOT NULL DEFAULT '', token_scores TEXT NOT NULL DEFAULT '[]', prompt TEXT, response TEXT,
    model_fingerprint TEXT NOT NULL, bundle_version TEXT NOT NULL, generation_status TEXT NOT NULL DEFAULT 'closed',
    early INTEGER NOT NULL DEFAULT 0, metadata TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    updated_at TEXT NOT NULL, note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX incidents_probe ON incidents (probe);
CREATE INDEX incidents_status ON incidents (status);
CREATE INDEX incidents_generation ON incidents (generation_id);
"""


def test_locations():
    loc = parse_location("postgresql://alice:s3cret@db.internal:5432/probewatch")
    assert loc.url.drivername == "postgresql+psycopg" and loc.path is None and not loc.is_sqlite
    assert "s3cret" not in loc.display and "***" in loc.display and "s3cret" not in str(loc)
    assert parse_location("postgres://h/db").url.drivername == "postgresql+psycopg"
    assert parse_location("postgresql+psycopg://h/db").url.database == "db"
    sqlite = parse_location("sqlite:////var/lib/probewatch/i.sqlite3")
    assert sqlite.is_sqlite and str(sqlite.path) == "/var/lib/probewatch/i.sqlite3"
    assert parse_location("~/inc.sqlite3").path.is_absolute()
    for bad, match in (
        ("mysql://h/db", "unsupported incident store URL scheme 'mysql'"),
        ("postgresql://h", "names no database"),
        ("sqlite://", "needs a file path"),
    ):
        with pytest.raises(IncidentStoreError, match=match):
            parse_location(bad)


def test_unreachable_server_is_a_one_line_error_without_the_password(tmp_path):
    from tests.server.store.pg import free_port

    url = f"postgresql://probewatch:hunter2@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(IncidentStoreError) as info:
        IncidentStore.open(url)
    message = str(info.value)
    assert message.startswith("cannot open the incident store at postgresql+psycopg://probewatch:***@127.0.0.1:")
    assert "hunter2" not in message and "\n" not in message and "PROBEWATCH_INCIDENT_DB" in message


def test_unusable_paths_fail_at_open(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IncidentStoreError, match="cannot open the incident store at .*file/inc.sqlite3"):
        IncidentStore.open(blocker / "inc.sqlite3")
    with pytest.raises(IncidentStoreError, match="is a directory"):
        IncidentStore.open(tmp_path)
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(
        IncidentStoreError, match="cannot open the incident store at .*junk.sqlite3: file is not a database"
    ):
        IncidentStore.open(junk)
    with pytest.raises(IncidentStoreError, match="no incident store at"):
        IncidentStore.open(tmp_path / "missing.sqlite3", readonly=True)


def test_a_store_from_before_migrations_is_upgraded_in_place(tmp_path):
    db = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(LEGACY_SCHEMA)
    row = (
        "INSERT INTO incidents (created_at, generation_id, probe, behaviour, score, threshold, model_fingerprint, "
        "bundle_version, metadata, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?)"
    )
    for gid in ("g1", "g2", "g1"):  # a generation id reused after a restart: two rows for (g1, dec)
        conn.execute(
            row, ("2026-11-01T10:00:00.000+00:00", gid, "dec", "deception", 2.0, 1.0, "fp", "1", '{"a": "b"}', "x")
        )
    conn.commit()
    conn.close()
    db.chmod(0o644)
    with pytest.raises(
        IncidentStoreError, match=r"older schema \(pre-migrations; this probewatch needs 0004\).*incidents migrate"
    ):
        IncidentStore.open(db, readonly=True)
    store = IncidentStore.open(db)
    assert [(i.id, i.generation_id) for i in store.find()] == [(3, "g1#dup3"), (2, "g2"), (1, "g1")]
    assert store.get(1).metadata == {"a": "b"} and store.get(1).label is None
    assert store.record_alert(store.get(1)) == 1  # now unique per (generation, probe)
    store.label(2, "alice", "true_positive")
    store.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"  # a store from before is narrowed to 0600
    assert IncidentStore.open(db, readonly=True).get(2).label == "true_positive"


def test_new_store_files_are_private(tmp_path):
    db = tmp_path / "new" / "incidents.sqlite3"
    IncidentStore.open(db).close()
    assert oct(db.stat().st_mode & 0o777) == "0o600" and oct(db.parent.stat().st_mode & 0o777) == "0o700"
    for extra in ("-wal", "-shm"):
        f = db.with_name(db.name + extra)
        assert not f.exists() or oct(f.stat().st_mode & 0o777) == "0o600"


def test_a_pre_migration_store_that_already_enforces_uniqueness_is_upgraded(tmp_path):
    db = tmp_path / "unique.sqlite3"
    conn = sqlite3.connect(db)
    conn.executescript(LEGACY_SCHEMA)
    conn.execute("CREATE UNIQUE INDEX incidents_generation_probe ON incidents (generation_id, probe)")
    conn.commit()
    conn.close()
    store = IncidentStore.open(db)
    incident = Incident("g1", "dec", "deception", 2.0, 1.0, "fp", "1")
    assert store.count() == 0 and store.record_alert(incident) == store.record_alert(incident) == 1
    store.close()
