"""The schema, as SQLAlchemy Core tables (the Alembic migrations create exactly this).

Portable between SQLite and PostgreSQL on purpose: times are fixed-width UTC ISO-8601 text
(`2026-11-30T12:00:00.000+00:00`), which sorts and compares correctly as text on both and is
what stores written before the migrations hold; JSON payloads are text. Ids are 64-bit on
PostgreSQL (a fleet writes many rows) and SQLite's rowid alias locally.

- `incidents`: one row per (generation, probe) that alerted, or ended inside the probe's uncertainty
  band (`priority` low) (unique: the sidecars' writes are idempotent upserts on it); review state lives
  on the row.
- `generations`: one row per generation that has incidents: the prompt length, the token ids
  at the scored positions, the tokens' texts (under the text policy) and every loaded probe's
  result, so an incident page can show the conversation as a per-token heatmap for each probe
  and the other probes' scores.
- `review_events`: the audit trail (reviewer, time, action, value, comment).
- `store_meta`: small key/value facts about the store (e.g. the review CSRF key; never the pseudonym key,
  which lives outside the store: pseudonym_keys.py).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, Float, ForeignKey, Index, Integer, MetaData, Table, Text

metadata = MetaData()

Id = BigInteger().with_variant(Integer(), "sqlite")

incidents = Table(
    "incidents",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("created_at", Text, nullable=False),
    Column("generation_id", Text, nullable=False),
    Column("probe", Text, nullable=False),
    Column("behaviour", Text, nullable=False),
    Column("score", Float, nullable=False),
    Column("threshold", Float, nullable=False),
    Column("aggregation", Text, nullable=False, server_default=""),
    Column("token_scores", Text, nullable=False, server_default="[]"),
    Column("prompt", Text),
    Column("response", Text),
    Column("model_fingerprint", Text, nullable=False),
    Column("bundle_version", Text, nullable=False),
    Column("generation_status", Text, nullable=False, server_default="closed"),
    Column("early", Boolean(create_constraint=False), nullable=False, server_default="0"),
    Column("metadata", Text, nullable=False, server_default="{}", key="meta"),
    Column("status", Text, nullable=False, server_default="open"),
    Column("updated_at", Text, nullable=False),
    Column("note", Text, nullable=False, server_default=""),
    # review state
    Column("label", Text),
    Column("severity", Text),
    Column("assignee", Text),
    Column("labelled_by", Text),
    Column("labelled_at", Text),
    Column("resolved_at", Text),
    Column("writer", Text),  # which sidecar wrote the row (host name): restart recovery in a fleet
    # records.PRIORITIES: `low` = an uncertain result (in the probe's band, no alert); older rows are alerts
    Column("priority", Text, nullable=False, server_default="normal"),
    Index("incidents_generation_probe", "generation_id", "probe", unique=True),
    Index("incidents_status_id", "status", "id"),
    Index("incidents_status_created", "status", "created_at"),  # backlog age per status from the index
    Index("incidents_probe", "probe"),
    Index("incidents_created", "created_at"),
    Index("incidents_label", "label"),
    Index("incidents_priority_id", "priority", "id"),
)

generations = Table(
    "generations",
    metadata,
    Column("generation_id", Text, primary_key=True),
    Column("created_at", Text, nullable=False),
    Column("updated_at", Text, nullable=False),
    Column("prompt_length", Integer),
    Column("tokens", Text, nullable=False, server_default="[]"),  # [[position, token id], ...]
    Column("probe_scores", Text, nullable=False, server_default="{}"),  # {probe: {score, threshold, ...}}
    # [[position, token text], ...] under the text policy (NULL: none kept, or a client that sends none)
    Column("token_texts", Text),
    Column("text_policy", Text),  # the --store-text mode the row's texts were kept under (NULL: before 0003)
)

review_events = Table(
    "review_events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("incident_id", Id, ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
    Column("at", Text, nullable=False),
    Column("reviewer", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("value", Text),
    Column("comment", Text),
    Index("review_events_incident", "incident_id", "id"),
)

store_meta = Table(
    "store_meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
