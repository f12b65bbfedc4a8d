"""Durable incident store (SQLite): one row per generation and probe whose aggregate crossed its
threshold, kept for human review (open -> acknowledged -> resolved).

SQLite because the default deployment is one sidecar with a volume: no server to run, durable on
commit (WAL), readable by `probewatch incidents` from another process while the sidecar writes.
`IncidentStore.open` checks at startup that the path is writable, so a bad `--incident-db` is a CLI
error instead of alerts silently lost later.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import json
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from probewatch.errors import ProbewatchError

STATUSES = ("open", "acknowledged", "resolved")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS incidents (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at        TEXT NOT NULL,
    generation_id     TEXT NOT NULL,
    probe             TEXT NOT NULL,
    behaviour         TEXT NOT NULL,
    score             REAL NOT NULL,
    threshold         REAL NOT NULL,
    aggregation       TEXT NOT NULL DEFAULT '',
    token_scores      TEXT NOT NULL DEFAULT '[]',
    prompt            TEXT,
    response          TEXT,
    model_fingerprint TEXT NOT NULL,
    bundle_version    TEXT NOT NULL,
    generation_status TEXT NOT NULL DEFAULT 'closed',
    early             INTEGER NOT NULL DEFAULT 0,
    metadata          TEXT NOT NULL DEFAULT '{}',
    status            TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'acknowledged', 'resolved')),
    updated_at        TEXT NOT NULL,
    note              TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS incidents_probe ON incidents (probe);
CREATE INDEX IF NOT EXISTS incidents_status ON incidents (status);
CREATE INDEX IF NOT EXISTS incidents_generation ON incidents (generation_id);
"""


class IncidentStoreError(ProbewatchError):
    """The incident store cannot be opened or written."""


class IncidentNotFoundError(ProbewatchError):
    """No incident with that id."""


@dataclass
class Incident:
    generation_id: str
    probe: str
    behaviour: str
    score: float
    threshold: float
    model_fingerprint: str
    bundle_version: str
    aggregation: str = ""
    token_scores: list[list[float]] = field(default_factory=list)  # [[position, score], ...] selected tokens
    prompt: str | None = None
    response: str | None = None
    generation_status: str = "closed"
    early: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    status: str = "open"
    id: int | None = None
    created_at: str = ""
    updated_at: str = ""
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class IncidentStore:
    """Thread-safe (one connection behind a lock); every write commits before returning."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path, readonly: bool = False) -> IncidentStore:
        path = Path(path).expanduser()
        try:
            if readonly:
                if not path.is_file():
                    raise IncidentStoreError(
                        f"no incident store at {path} (the sidecar creates it on startup; "
                        "pass --db or set PROBEWATCH_INCIDENT_DB)"
                    )
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, timeout=10)
                return cls(path, conn)
            if path.is_dir():
                raise IncidentStoreError(f"incident store path {path} is a directory; pass a file path")
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), check_same_thread=False, timeout=10)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            # Prove the file takes a write now (read-only mounts, permissions), not at the first alert.
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("ROLLBACK")
            conn.commit()
        except IncidentStoreError:
            raise
        except (OSError, sqlite3.Error) as exc:
            raise IncidentStoreError(
                f"cannot open the incident store at {path}: {exc} "
                "(pass a writable --incident-db PATH or set PROBEWATCH_INCIDENT_DB)"
            ) from exc
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- writes ----------------------------------------------------------------------------------
    def record(self, incident: Incident) -> int:
        now = _now()
        incident.created_at = incident.created_at or now
        incident.updated_at = now
        row = (
            incident.created_at,
            incident.generation_id,
            incident.probe,
            incident.behaviour,
            float(incident.score),
            float(incident.threshold),
            incident.aggregation,
            json.dumps(incident.token_scores),
            incident.prompt,
            incident.response,
            incident.model_fingerprint,
            incident.bundle_version,
            incident.generation_status,
            int(incident.early),
            json.dumps(incident.metadata),
            incident.status,
            incident.updated_at,
            incident.note,
        )
        with self._lock:
            cur = self._conn.execute(
                "INSERT INTO incidents (created_at, generation_id, probe, behaviour, score, threshold, aggregation, "
                "token_scores, prompt, response, model_fingerprint, bundle_version, generation_status, early, metadata, "
                "status, updated_at, note) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                row,
            )
            self._conn.commit()
        assert cur.lastrowid is not None  # an INSERT always sets it
        incident.id = int(cur.lastrowid)
        return incident.id

    def set_status(self, incident_id: int, status: str, note: str | None = None) -> Incident:
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not one of {STATUSES}")
        with self._lock:
            cur = self._conn.execute(
                "UPDATE incidents SET status = ?, updated_at = ?, note = COALESCE(?, note) WHERE id = ?",
                (status, _now(), note, int(incident_id)),
            )
            self._conn.commit()
        if cur.rowcount == 0:
            raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.path}")
        return self.get(incident_id)

    # -- reads -----------------------------------------------------------------------------------
    def get(self, incident_id: int) -> Incident:
        rows = self._query("SELECT * FROM incidents WHERE id = ?", (int(incident_id),))
        if not rows:
            raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.path}")
        return rows[0]

    def list(
        self, probe: str | None = None, status: str | None = None, generation_id: str | None = None, limit: int = 100
    ) -> builtins.list[Incident]:
        clauses: builtins.list[str] = []
        params: builtins.list[object] = []
        for column, value in (("probe", probe), ("status", status), ("generation_id", generation_id)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._query(f"SELECT * FROM incidents {where} ORDER BY id DESC LIMIT ?", (*params, int(limit)))

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0])

    def _query(self, sql: str, params: tuple) -> builtins.list[Incident]:
        with self._lock:
            cur = self._conn.execute(sql, params)
            names = [c[0] for c in cur.description]
            rows = cur.fetchall()
        out = []
        for values in rows:
            data = dict(zip(names, values))
            data["token_scores"] = json.loads(data["token_scores"] or "[]")
            data["metadata"] = json.loads(data["metadata"] or "{}")
            data["early"] = bool(data["early"])
            out.append(Incident(**data))
        return out
