"""The incident store: one class over SQLite (embedded default) and PostgreSQL (a fleet).

Writers are the sidecars (an alert's row as it is raised, completed when its generation ends)
and reviewers (review actions, each appended to the audit trail in the same transaction).
Every write is one transaction that commits before the call returns.

Idempotence: `(generation_id, probe)` is unique, and the sidecar's writes are upserts on it
(`INSERT ... ON CONFLICT`), so a retried write, two writers racing on one generation, or an
alert row written early and then again at close leave exactly one row. Review state is never
touched by those writes: a sidecar completing a row a reviewer already labelled keeps the label.

Thread-safe: SQLAlchemy's pool hands each call its own connection.
"""

from __future__ import annotations

import builtins
import datetime as _dt
import json
import logging
import os
import socket
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, and_, delete, func, insert, or_, select, update
from sqlalchemy.exc import SQLAlchemyError

from probewatch.jsonio import dumps
from probewatch.server.store import connect, migrate
from probewatch.server.store.location import StoreLocation, parse_location
from probewatch.server.store.privacy import DEFAULT_MAX_CHARS, TextPolicy
from probewatch.server.store.queue import MAX_PER_PAGE as _MAX_PER_PAGE
from probewatch.server.store.queue import QueueFilter, QueuePage, QueueRow, iso, now_iso, page_query
from probewatch.server.store.records import (
    GENERATION_STATUSES,
    LABELS,
    SEVERITIES,
    STATUSES,
    Incident,
    IncidentNotFoundError,
    IncidentStoreError,
    ReviewConflictError,
    ReviewError,
    ReviewEvent,
)
from probewatch.server.store.tables import generations as g
from probewatch.server.store.tables import incidents as t
from probewatch.server.store.tables import review_events as ev
from probewatch.server.store.tables import store_meta

log = logging.getLogger(__name__)

MAX_REVIEWER_CHARS = 200
MAX_COMMENT_CHARS = 10_000
_GENERATION_COLUMNS = (g.c.prompt_length, g.c.tokens, g.c.probe_scores, g.c.updated_at.label("generation_updated_at"))
#: what the sidecar writes; review columns are never in an upsert's SET
_FINAL_FIELDS = ("score", "token_scores", "prompt", "response", "generation_status", "meta", "updated_at")


@dataclass
class ReviewStats:
    """What the review metrics export (server/review/metrics.py)."""

    counts: dict[str, int] = field(default_factory=dict)  # incidents per review status
    oldest_age_s: dict[str, float] = field(default_factory=dict)  # per unresolved status
    labels: dict[tuple[str, str], int] = field(default_factory=dict)  # (probe, label) -> incidents

    def precision(self) -> dict[str, float]:
        """Reviewed precision per probe: true / (true + false positives), probes with a verdict only."""
        out = {}
        for probe in sorted({p for p, _ in self.labels}):
            tp = self.labels.get((probe, "true_positive"), 0)
            fp = self.labels.get((probe, "false_positive"), 0)
            if tp + fp:
                out[probe] = tp / (tp + fp)
        return out


def _json(value: Any) -> str:
    return dumps(value, separators=(",", ":"))


def _reason(exc: BaseException) -> str:
    """The driver's own message (SQLAlchemy's wrapper adds the statement and a docs link)."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _reviewer(name: str) -> str:
    name = (name or "").strip()
    if not name:
        raise ReviewError("a review action needs a reviewer identity")
    if len(name) > MAX_REVIEWER_CHARS:
        raise ReviewError(f"reviewer identity longer than {MAX_REVIEWER_CHARS} characters")
    return name


def _comment(text: str | None) -> str | None:
    if text is None or not text.strip():
        return None
    if len(text) > MAX_COMMENT_CHARS:
        raise ReviewError(f"comment of {len(text)} characters is over the {MAX_COMMENT_CHARS}-character limit")
    return text.strip()


class IncidentStore:
    """Open with `IncidentStore.open(path_or_url)`; every public method is one transaction."""

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

    # -- opening -----------------------------------------------------------------------------------
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
    ) -> IncidentStore:
        """Open (creating and migrating when needed) the store at a SQLite path or a database URL.

        Writers (readonly=False) create the store, upgrade its schema and prove it takes a write
        now, so a bad location is a start-up error rather than alerts lost later. Readers never
        create or migrate. `store_text` / `policy`: what rows keep of prompts and responses.
        """
        loc = parse_location(location)
        where = loc.display
        hint = "(pass a writable --incident-db PATH or URL, or set PROBEWATCH_INCIDENT_DB)"
        try:
            # the pseudonym key lives in the store: set once it is open (readers write nothing)
            text_policy = policy or TextPolicy(store_text, max_chars=max_text_chars)
        except ValueError as exc:
            raise IncidentStoreError(str(exc)) from None
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
        store = cls(loc, engine, readonly=readonly, policy=text_policy, writer=writer)
        if policy is None and not readonly:
            # one key per store, shared by every replica: a user's pseudonym is the same in all rows
            text_policy.key = store.pseudonym_key()
        return store

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> IncidentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        if self.readonly:
            raise IncidentStoreError(f"the incident store at {self.location.display} is open read-only")
        with self.engine.connect().execution_options(**connect.WRITE) as conn, conn.begin():
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    # -- sidecar writes -----------------------------------------------------------------------------
    def _values(self, incident: Incident) -> dict[str, Any]:
        return {
            "created_at": incident.created_at,
            "generation_id": incident.generation_id,
            "probe": incident.probe,
            "behaviour": incident.behaviour,
            "score": float(incident.score),
            "threshold": float(incident.threshold),
            "aggregation": incident.aggregation,
            "token_scores": _json(incident.token_scores),
            "prompt": self.policy.text(incident.prompt),
            "response": self.policy.text(incident.response),
            "model_fingerprint": incident.model_fingerprint,
            "bundle_version": incident.bundle_version,
            "generation_status": incident.generation_status,
            "early": bool(incident.early),
            "meta": _json(self.policy.metadata(incident.metadata)),
            "status": incident.status,
            "updated_at": incident.updated_at,
            "note": incident.note,
            "writer": self.writer,
        }

    def _stamp(self, incident: Incident) -> None:
        if incident.generation_status not in GENERATION_STATUSES:
            raise ValueError(f"generation status {incident.generation_status!r} not one of {GENERATION_STATUSES}")
        if incident.status not in STATUSES:
            raise ValueError(f"status {incident.status!r} not one of {STATUSES}")
        now = now_iso()
        incident.created_at = incident.created_at or now
        incident.updated_at = now

    def _upsert_generation(
        self,
        conn: Connection,
        generation_id: str,
        prompt_length: int | None,
        tokens: Sequence[Sequence[int]] | None,
        context: Mapping[str, Any] | None,
    ) -> None:
        """The generation's shared row: prompt length, token ids (full text mode only), every probe's result."""
        values: dict[str, Any] = {}
        if prompt_length is not None and prompt_length >= 0:
            values["prompt_length"] = int(prompt_length)
        if tokens and self.policy.mode == "full":
            values["tokens"] = _json([[int(p), int(i)] for p, i in tokens])
        if context:
            values["probe_scores"] = _json(context)
        if not values:
            return
        now = now_iso()
        stmt = self._insert(g).values(generation_id=generation_id, created_at=now, updated_at=now, **values)
        stmt = stmt.on_conflict_do_update(
            index_elements=[g.c.generation_id],
            set_={**{k: stmt.excluded[k] for k in values}, "updated_at": now},
        )
        conn.execute(stmt)

    def record_alert(self, incident: Incident) -> int:
        """The row of an alert as it is raised (generation_status `open`); returns its id.

        Idempotent per (generation_id, probe): when the row exists (written by this or another
        sidecar), its id is returned and the row is left as it is.
        """
        self._stamp(incident)
        with self._write() as conn:
            stmt = self._insert(t).values(**self._values(incident))
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[t.c.generation_id, t.c.probe]))
            incident.id = int(
                conn.execute(
                    select(t.c.id).where(t.c.generation_id == incident.generation_id, t.c.probe == incident.probe)
                ).scalar_one()
            )
            self._upsert_generation(
                conn, incident.generation_id, incident.prompt_length, incident.tokens, incident.context
            )
        return incident.id

    def record(self, incident: Incident) -> int:
        """Write a finished incident in one go (upsert): a new row, or the final state of an existing one."""
        self._stamp(incident)
        values = self._values(incident)
        with self._write() as conn:
            stmt = self._insert(t).values(**values)
            stmt = stmt.on_conflict_do_update(
                index_elements=[t.c.generation_id, t.c.probe],
                set_={k: stmt.excluded[k] for k in _FINAL_FIELDS},
            ).returning(t.c.id)
            incident.id = int(conn.execute(stmt).scalar_one())
            self._upsert_generation(
                conn, incident.generation_id, incident.prompt_length, incident.tokens, incident.context
            )
        return incident.id

    def complete(
        self,
        incident_id: int,
        *,
        score: float,
        token_scores: list[list[float]],
        generation_status: str,
        prompt: str | None = None,
        response: str | None = None,
        metadata: dict[str, str] | None = None,
        prompt_length: int | None = None,
        tokens: Sequence[Sequence[int]] | None = None,
        context: Mapping[str, Any] | None = None,
    ) -> None:
        """Finish an alert's row when its generation ends: final score, kept token scores, text, context."""
        if generation_status not in GENERATION_STATUSES:
            raise ValueError(f"generation status {generation_status!r} not one of {GENERATION_STATUSES}")
        values: dict[str, Any] = {
            "score": float(score),
            "token_scores": _json(token_scores),
            "prompt": self.policy.text(prompt),
            "response": self.policy.text(response),
            "generation_status": generation_status,
            "updated_at": now_iso(),
        }
        if metadata is not None:
            values["meta"] = _json(self.policy.metadata(metadata))
        with self._write() as conn:
            gid = conn.execute(select(t.c.generation_id).where(t.c.id == int(incident_id))).scalar()
            if gid is None:  # deleted meanwhile (retention, `incidents delete`): nothing to complete
                raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.location.display}")
            conn.execute(update(t).where(t.c.id == int(incident_id)).values(**values))
            self._upsert_generation(conn, gid, prompt_length, tokens, context)

    def mark_interrupted(self, stale_after_s: float | None = None) -> int:
        """Rows left `open` by a sidecar that stopped mid-generation become `interrupted` (at start-up).

        SQLite (one embedded writer): every open row. PostgreSQL (a fleet): the rows this writer
        (host name) left, plus, with `stale_after_s`, any writer's open rows not updated for that
        long (a pod that never came back); other live sidecars' open rows are left alone.
        """
        now = now_iso()
        if self.backend == "sqlite":
            which = t.c.generation_status == "open"
        else:
            mine: Any = t.c.writer == self.writer
            if stale_after_s is not None:
                cutoff = iso(_dt.datetime.now(_dt.timezone.utc) - _dt.timedelta(seconds=stale_after_s))
                mine = or_(mine, t.c.updated_at < cutoff)
            which = and_(t.c.generation_status == "open", mine)
        with self._write() as conn:
            result = conn.execute(update(t).where(which).values(generation_status="interrupted", updated_at=now))
        return int(result.rowcount)

    # -- deletion and retention ---------------------------------------------------------------------
    def delete(
        self,
        ids: Iterable[int] = (),
        generation_id: str | None = None,
        before: _dt.datetime | None = None,
        everything: bool = False,
    ) -> int:
        """Delete incidents by id, by generation, created before a time, or all (with their audit
        trail and, once no incident refers to it, their generation's row); returns how many went."""
        clauses: builtins.list[Any] = []
        id_list = [int(i) for i in ids]
        if id_list:
            clauses.append(t.c.id.in_(id_list))
        if generation_id is not None:
            clauses.append(t.c.generation_id == generation_id)
        if before is not None:
            clauses.append(t.c.created_at < iso(before))
        if not clauses and not everything:
            raise ValueError("delete needs ids, a generation, a cut-off time, or everything=True")
        where = or_(*clauses) if clauses else None
        with self._write() as conn:
            doomed = select(t.c.id) if where is None else select(t.c.id).where(where)
            conn.execute(delete(ev).where(ev.c.incident_id.in_(doomed)))
            result = conn.execute(delete(t) if where is None else delete(t).where(where))
            conn.execute(delete(g).where(~g.c.generation_id.in_(select(t.c.generation_id))))
            deleted = int(result.rowcount)
        if deleted and self.backend == "sqlite":
            # write the overwritten pages back and empty the WAL: no copy of the deleted rows remains
            raw = self.engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                raw.close()
        return deleted

    def purge_older_than(self, days: float, now: _dt.datetime | None = None) -> int:
        """Retention: delete every incident created more than `days` days ago."""
        now = now or _dt.datetime.now(_dt.timezone.utc)
        return self.delete(before=now - _dt.timedelta(days=days))

    # -- review actions (each one transaction: the change and its audit entry) ----------------------
    def _act(
        self,
        incident_id: int,
        reviewer: str,
        action: str,
        decide,
        value: str | None = None,
        comment: str | None = None,
    ) -> Incident:
        """Lock the row, let `decide(row)` validate and return the column updates, write both."""
        reviewer = _reviewer(reviewer)
        comment = _comment(comment)
        with self._write() as conn:
            row = (
                conn.execute(
                    select(t.c.id, t.c.status, t.c.assignee, t.c.label)
                    .where(t.c.id == int(incident_id))
                    .with_for_update()
                )
                .mappings()
                .first()
            )
            if row is None:
                raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.location.display}")
            now = now_iso()
            updates = decide(dict(row), now)
            if updates:
                conn.execute(update(t).where(t.c.id == int(incident_id)).values(**updates, updated_at=now))
            conn.execute(
                insert(ev).values(
                    incident_id=int(incident_id), at=now, reviewer=reviewer, action=action, value=value, comment=comment
                )
            )
        return self.get(incident_id)

    def claim(self, incident_id: int, reviewer: str, force: bool = False) -> Incident:
        """Take an incident (open -> acknowledged); one claimed by someone else needs force=True."""
        who = _reviewer(reviewer)

        def decide(row: dict, now: str) -> dict:
            if row["status"] == "resolved":
                raise ReviewError(f"incident {incident_id} is resolved; reopen it first")
            if row["assignee"] not in (None, who) and not force:
                raise ReviewConflictError(
                    f"incident {incident_id} is claimed by {row['assignee']}; take it over explicitly"
                )
            return {"assignee": who, "status": "acknowledged"}

        return self._act(incident_id, who, "claim", decide)

    def unclaim(self, incident_id: int, reviewer: str) -> Incident:
        """Give an incident back to the queue (acknowledged -> open)."""
        who = _reviewer(reviewer)

        def decide(row: dict, now: str) -> dict:
            if row["assignee"] not in (None, who):
                raise ReviewConflictError(f"incident {incident_id} is claimed by {row['assignee']}, not {who}")
            return {"assignee": None, "status": "open" if row["status"] == "acknowledged" else row["status"]}

        return self._act(incident_id, who, "unclaim", decide)

    def label(self, incident_id: int, reviewer: str, label: str, comment: str | None = None) -> Incident:
        """Record the verdict (true_positive / false_positive / unsure); an unclaimed incident is claimed too."""
        if label not in LABELS:
            raise ReviewError(f"label {label!r} not one of {', '.join(LABELS)}")
        who = _reviewer(reviewer)

        def decide(row: dict, now: str) -> dict:
            updates = {"label": label, "labelled_by": who, "labelled_at": now}
            if row["assignee"] is None:
                updates["assignee"] = who
            if row["status"] == "open":
                updates["status"] = "acknowledged"
            return updates

        return self._act(incident_id, who, "label", decide, value=label, comment=comment)

    def set_severity(self, incident_id: int, reviewer: str, severity: str | None) -> Incident:
        severity = severity or None
        if severity is not None and severity not in SEVERITIES:
            raise ReviewError(f"severity {severity!r} not one of {', '.join(SEVERITIES)}")
        return self._act(incident_id, reviewer, "severity", lambda row, now: {"severity": severity}, value=severity)

    def comment(self, incident_id: int, reviewer: str, text: str) -> Incident:
        if _comment(text) is None:
            raise ReviewError("empty comment")
        return self._act(incident_id, reviewer, "comment", lambda row, now: {}, comment=text)

    def resolve(self, incident_id: int, reviewer: str, comment: str | None = None) -> Incident:
        """Close the review; the incident must carry a verdict first (it feeds precision and training)."""

        def decide(row: dict, now: str) -> dict:
            if row["label"] is None:
                raise ReviewError(f"incident {incident_id} has no label: label it before resolving")
            return {"status": "resolved", "resolved_at": now}

        return self._act(incident_id, reviewer, "resolve", decide, comment=comment)

    def reopen(self, incident_id: int, reviewer: str, comment: str | None = None) -> Incident:
        def decide(row: dict, now: str) -> dict:
            return {"status": "acknowledged" if row["assignee"] else "open", "resolved_at": None}

        return self._act(incident_id, reviewer, "reopen", decide, comment=comment)

    def set_status(self, incident_id: int, status: str, note: str | None = None, reviewer: str = "cli") -> Incident:
        """Set the review status directly (`probewatch incidents ack|resolve|reopen`), audited like the rest."""
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not one of {STATUSES}")

        def decide(row: dict, now: str) -> dict:
            updates: dict[str, Any] = {"status": status, "resolved_at": now if status == "resolved" else None}
            if note is not None:
                updates["note"] = note
            return updates

        return self._act(incident_id, reviewer, "status", decide, value=status, comment=note)

    def events(self, incident_id: int) -> builtins.list[ReviewEvent]:
        """The audit trail of one incident, oldest first."""
        with self._read() as conn:
            rows = conn.execute(select(ev).where(ev.c.incident_id == int(incident_id)).order_by(ev.c.id)).mappings()
            return [ReviewEvent(**dict(r)) for r in rows]

    # -- reads --------------------------------------------------------------------------------------
    def get(self, incident_id: int) -> Incident:
        """One incident with its generation's context (token ids, every probe's result)."""
        stmt = (
            select(t, *_GENERATION_COLUMNS)
            .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
            .where(t.c.id == int(incident_id))
        )
        with self._read() as conn:
            row = conn.execute(stmt).mappings().first()
        if row is None:
            raise IncidentNotFoundError(f"no incident with id {incident_id} in {self.location.display}")
        return _incident(row)

    def list(
        self,
        probe: str | None = None,
        status: str | None = None,
        generation_id: str | None = None,
        limit: int = 100,
        generation_status: str | None = None,
        label: str | None = None,
    ) -> builtins.list[Incident]:
        """Newest first, without the generation context (`get` has it)."""
        clauses = [
            column == value
            for column, value in (
                (t.c.probe, probe),
                (t.c.status, status),
                (t.c.generation_id, generation_id),
                (t.c.generation_status, generation_status),
                (t.c.label, label),
            )
            if value is not None
        ]
        stmt = select(t).where(*clauses).order_by(t.c.id.desc()).limit(int(limit))
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(stmt).mappings()]

    def count(self, status: str | None = None, probe: str | None = None) -> int:
        clauses = [c == v for c, v in ((t.c.status, status), (t.c.probe, probe)) if v is not None]
        with self._read() as conn:
            return int(conn.execute(select(func.count()).select_from(t).where(*clauses)).scalar_one())

    def queue(self, flt: QueueFilter | None = None, page: int = 1, per_page: int = 50) -> QueuePage:
        """One page of the review queue (newest first), the match count and per-status counts."""
        flt = (flt or QueueFilter()).validate()
        page = max(1, int(page))
        per_page = min(max(1, int(per_page)), _MAX_PER_PAGE)
        rows_q, total_q, counts_q = page_query(flt, page, per_page)
        with self._read() as conn:
            rows = [QueueRow(**dict(r)) for r in conn.execute(rows_q).mappings()]
            total = int(conn.execute(total_q).scalar_one())
            counts = dict.fromkeys(STATUSES, 0)
            counts.update({str(s): int(n) for s, n in conn.execute(counts_q)})
        return QueuePage(rows, total, page, per_page, counts)

    def facets(self) -> dict[str, builtins.list[str]]:
        """Distinct values for the queue's filter menus."""
        with self._read() as conn:

            def distinct(column) -> builtins.list[str]:
                stmt = select(column).where(column.is_not(None)).distinct().order_by(column)
                return [str(v) for v in conn.execute(stmt).scalars()]

            reviewers = sorted(set(distinct(t.c.assignee)) | set(distinct(t.c.labelled_by)))
            return {
                "probe": distinct(t.c.probe),
                "behaviour": distinct(t.c.behaviour),
                "model": distinct(t.c.model_fingerprint),
                "reviewer": reviewers,
            }

    def labelled(self, labels: Sequence[str] = ("true_positive", "false_positive"), probe: str | None = None):
        """Every incident with one of `labels` (oldest first), with its generation's context."""
        stmt = (
            select(t, *_GENERATION_COLUMNS)
            .select_from(t.outerjoin(g, g.c.generation_id == t.c.generation_id))
            .where(t.c.label.in_(list(labels)))
            .order_by(t.c.id)
        )
        if probe is not None:
            stmt = stmt.where(t.c.probe == probe)
        with self._read() as conn:
            return [_incident(r) for r in conn.execute(stmt).mappings()]

    def review_stats(self, now: _dt.datetime | None = None) -> ReviewStats:
        """Backlog per status, age of the oldest unresolved incident per status, verdicts per probe."""
        now = now or _dt.datetime.now(_dt.timezone.utc)
        stats = ReviewStats(counts=dict.fromkeys(STATUSES, 0))
        with self._read() as conn:
            for status, n, oldest in conn.execute(
                select(t.c.status, func.count(), func.min(t.c.created_at)).group_by(t.c.status)
            ):
                stats.counts[str(status)] = int(n)
                if status != "resolved" and oldest:
                    created = _dt.datetime.fromisoformat(str(oldest))
                    stats.oldest_age_s[str(status)] = max(0.0, (now - created).total_seconds())
            for probe, label, n in conn.execute(
                select(t.c.probe, t.c.label, func.count()).where(t.c.label.is_not(None)).group_by(t.c.probe, t.c.label)
            ):
                stats.labels[(str(probe), str(label))] = int(n)
        return stats

    def secret(self, name: str) -> bytes:
        """A random 32-byte key kept in the store (made on first use; every process and replica shares it)."""
        with self._write() as conn:
            stmt = self._insert(store_meta).values(key=name, value=os.urandom(32).hex())
            conn.execute(stmt.on_conflict_do_nothing(index_elements=[store_meta.c.key]))
            value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == name)).scalar_one()
        return bytes.fromhex(value)

    def pseudonym_key(self) -> bytes:
        """The store's key for keyed pseudonyms of identifying metadata (a redacting text policy uses it)."""
        return self.secret("pseudonym_key")


def _incident(row: Any) -> Incident:
    """An Incident from a result row mapping (the incidents columns, optionally the generation's)."""
    data = dict(row)
    meta = data.pop("meta", None) or data.pop("metadata", None)
    data.pop("writer", None)
    tokens = data.pop("tokens", None)
    probe_scores = data.pop("probe_scores", None)
    return Incident(
        **{
            k: v
            for k, v in data.items()
            if k not in ("token_scores", "early", "prompt_length", "generation_updated_at")
        },
        generation_updated_at=data.get("generation_updated_at"),
        token_scores=json.loads(data.get("token_scores") or "[]"),
        early=bool(data.get("early")),
        metadata=json.loads(meta or "{}"),
        prompt_length=data.get("prompt_length"),
        tokens=json.loads(tokens or "[]"),
        context=json.loads(probe_scores or "{}"),
    )


def _dialect_insert(name: str):
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
