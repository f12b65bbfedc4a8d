"""The sidecar's client: alert rows as they are raised, completed when their generation ends, rows a
stopped sidecar left open, and deletion (by hand and by retention).

Idempotence: `(generation_id, probe)` is unique, and the sidecar's writes are upserts on it
(`INSERT ... ON CONFLICT`), so a retried write, two writers racing on one generation, or an
alert row written early and then again at close leave exactly one row. Review state is never
touched by those writes: a sidecar completing a row a reviewer already labelled keeps the label.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, and_, delete, or_, select, update

from probewatch.jsonio import dumps
from probewatch.server.store.core import StoreCore
from probewatch.server.store.queue import iso, now_iso
from probewatch.server.store.records import (
    GENERATION_STATUSES,
    PRIORITIES,
    STATUSES,
    Incident,
    IncidentNotFoundError,
)
from probewatch.server.store.tables import generations as g
from probewatch.server.store.tables import incidents as t
from probewatch.server.store.tables import review_events as ev

#: what the sidecar writes; review columns are never in an upsert's SET
_FINAL_FIELDS = ("score", "token_scores", "prompt", "response", "generation_status", "meta", "updated_at")


def _json(value: Any) -> str:
    return dumps(value, separators=(",", ":"))


class IncidentWriter(StoreCore):
    """Sidecar writes and retention; mixed into `IncidentStore`."""

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
            "priority": incident.priority,
            "writer": self.writer,
        }

    def _stamp(self, incident: Incident) -> None:
        if incident.generation_status not in GENERATION_STATUSES:
            raise ValueError(f"generation status {incident.generation_status!r} not one of {GENERATION_STATUSES}")
        if incident.status not in STATUSES:
            raise ValueError(f"status {incident.status!r} not one of {STATUSES}")
        if incident.priority not in PRIORITIES:
            raise ValueError(f"priority {incident.priority!r} not one of {PRIORITIES}")
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
        token_texts: Sequence[Sequence[Any]] | None = None,
    ) -> None:
        """The generation's shared row: prompt length, token ids (full text mode only), token texts (under the
        text policy: masked when redacted, none under `none`), every probe's result."""
        values: dict[str, Any] = {}
        if prompt_length is not None and prompt_length >= 0:
            values["prompt_length"] = int(prompt_length)
        if tokens and self.policy.mode == "full":
            values["tokens"] = _json([[int(p), int(i)] for p, i in tokens])
        if token_texts:
            kept = self.policy.token_texts(token_texts)
            values["text_policy"] = self.policy.mode
            if kept is not None:
                values["token_texts"] = _json(kept)
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
                conn,
                incident.generation_id,
                incident.prompt_length,
                incident.tokens,
                incident.context,
                incident.token_texts,
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
                conn,
                incident.generation_id,
                incident.prompt_length,
                incident.tokens,
                incident.context,
                incident.token_texts,
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
        token_texts: Sequence[Sequence[Any]] | None = None,
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
            self._upsert_generation(conn, gid, prompt_length, tokens, context, token_texts)

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
        clauses: list[Any] = []
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
