"""The incident store's contract, each test body run on SQLite and on a real PostgreSQL (`store_location`)."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from sqlalchemy import text

from probewatch.server.store import (
    IncidentNotFoundError,
    IncidentStore,
    IncidentStoreError,
    QueueFilter,
    ReviewConflictError,
    ReviewError,
)
from tests.server.store.factory import make_incident


@pytest.fixture
def store(store_location):
    s = IncidentStore.open(store_location)
    yield s
    s.close()


def test_record_get_list_and_reopen(store_location):
    store = IncidentStore.open(store_location)
    a = store.record(make_incident())
    b = store.record(make_incident(generation_id="g2", probe="ref", behaviour="refusal", prompt=None, response=None))
    assert (a, b) == (1, 2) and store.count() == 2
    got = store.get(a)
    assert got.token_scores == [[7, 0.5], [8, 2.5]] and got.metadata == {"tenant": "x"} and got.status == "open"
    assert got.tokens == [[7, 101], [8, 102]] and got.prompt_length == 7
    assert got.context["ref"] == {"score": -1.0, "flagged": False}
    assert got.created_at.endswith("+00:00") and got.early is False and got.label is None
    assert [i.id for i in store.find()] == [2, 1]
    assert [i.id for i in store.find(probe="ref")] == [2]
    with pytest.raises(IncidentNotFoundError, match="no incident with id 99"):
        store.get(99)
    store.close()
    reader = IncidentStore.open(store_location, readonly=True)  # another process in production
    assert reader.count() == 2 and reader.get(b).prompt is None
    with pytest.raises(IncidentStoreError, match="read-only"):
        reader.record(make_incident(generation_id="g3"))
    reader.close()


def test_writes_are_idempotent_per_generation_and_probe(store):
    first = store.record_alert(
        make_incident(score=1.5, generation_status="open", response=None, token_scores=[[7, 1.5]])
    )
    again = store.record_alert(make_incident(score=9.0, generation_status="open"))
    assert first == again and store.count() == 1
    assert store.get(first).score == 1.5  # the second alert write left the row alone
    store.label(first, "alice", "false_positive")
    # the row completed at close (an upsert): final values in, review state kept
    assert store.record(make_incident(score=3.0, generation_status="closed", context={"dec": {"score": 3.0}})) == first
    row = store.get(first)
    assert (row.score, row.generation_status, row.response, row.label, row.labelled_by) == (
        3.0,
        "closed",
        "a",
        "false_positive",
        "alice",
    )
    assert row.context == {"dec": {"score": 3.0}} and store.count() == 1
    store.complete(first, score=4.0, token_scores=[[9, 4.0]], generation_status="aborted", prompt="p2", response="r2")
    row = store.get(first)
    assert (row.score, row.token_scores, row.generation_status, row.prompt, row.label) == (
        4.0,
        [[9, 4.0]],
        "aborted",
        "p2",
        "false_positive",
    )
    with pytest.raises(ValueError, match="generation status 'weird'"):
        store.complete(first, score=1, token_scores=[], generation_status="weird")
    store.delete(ids=[first])
    with pytest.raises(IncidentNotFoundError):
        store.complete(first, score=1, token_scores=[], generation_status="closed")


def test_concurrent_writers_lose_and_duplicate_nothing(store_location):
    """8 threads, each with its own store handle, write 40 generations x 2 probes, half the ids shared."""
    stores = [IncidentStore.open(store_location) for _ in range(8)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(40):
                gid = f"shared-{i}" if i % 2 == 0 else f"own-{k}-{i}"
                for probe in ("dec", "ref"):
                    stores[k].record_alert(make_incident(generation_id=gid, probe=probe, generation_status="open"))
                    stores[k].record(make_incident(generation_id=gid, probe=probe, score=float(k)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(120)
    assert not errors, errors
    expected = (20 + 8 * 20) * 2  # 20 shared generations once, 20 own per thread; two probes each
    assert stores[0].count() == expected
    rows = stores[0].find(limit=10_000)
    assert len({(r.generation_id, r.probe) for r in rows}) == expected
    assert all(r.generation_status == "closed" for r in rows)
    for s in stores:
        s.close()


def test_review_actions_and_audit_trail(store):
    i = store.record(make_incident())
    with pytest.raises(ReviewError, match="no label: label it before resolving"):
        store.resolve(i, "alice")
    assert store.claim(i, "alice").status == "acknowledged"
    assert store.get(i).assignee == "alice"
    with pytest.raises(ReviewConflictError, match="claimed by alice"):
        store.claim(i, "bob")
    with pytest.raises(ReviewConflictError, match="claimed by alice, not bob"):
        store.unclaim(i, "bob")
    assert store.claim(i, "bob", force=True).assignee == "bob"
    with pytest.raises(ReviewError, match="label 'maybe' not one of"):
        store.label(i, "bob", "maybe")
    with pytest.raises(ReviewError, match="severity 'huge'"):
        store.set_severity(i, "bob", "huge")
    with pytest.raises(ReviewError, match="needs a reviewer identity"):
        store.comment(i, "  ", "x")
    with pytest.raises(ReviewError, match="empty comment"):
        store.comment(i, "bob", "   ")
    store.label(i, "bob", "true_positive", comment="clear lie about the refund")
    store.set_severity(i, "bob", "high")
    store.comment(i, "carol", "agreed")
    resolved = store.resolve(i, "bob")
    assert (resolved.status, resolved.label, resolved.severity, resolved.labelled_by) == (
        "resolved",
        "true_positive",
        "high",
        "bob",
    )
    assert resolved.resolved_at
    with pytest.raises(ReviewError, match="is resolved; reopen it first"):
        store.claim(i, "bob")
    assert store.reopen(i, "alice", comment="second look").status == "acknowledged"
    assert store.get(i).resolved_at is None
    assert store.unclaim(i, "bob").status == "open"
    store.set_status(i, "resolved", note="cli note", reviewer="cli:root")
    events = store.events(i)
    assert [(e.reviewer, e.action, e.value) for e in events] == [
        ("alice", "claim", None),
        ("bob", "claim", None),
        ("bob", "label", "true_positive"),
        ("bob", "severity", "high"),
        ("carol", "comment", None),
        ("bob", "resolve", None),
        ("alice", "reopen", None),
        ("bob", "unclaim", None),
        ("cli:root", "status", "resolved"),
    ]
    assert events[2].comment == "clear lie about the refund" and events[-1].comment == "cli note"
    assert all(e.at.endswith("+00:00") for e in events) and [e.at for e in events] == sorted(e.at for e in events)
    with pytest.raises(IncidentNotFoundError):
        store.label(999, "bob", "unsure")
    assert store.events(999) == []


def test_queue_filters_paging_counts_and_facets(store):
    now = dt.datetime.now(dt.timezone.utc)
    specs = [
        # generation, probe, behaviour, score, fingerprint, age in days
        ("g1", "dec", "deception", 1.2, "pwfp1:aaaa", 10),
        ("g2", "dec", "deception", 3.4, "pwfp1:aaaa", 2),
        ("g3", "ref", "refusal", 0.4, "pwfp1:bbbb", 1),
        ("g4", "af", "alignment_faking", 5.0, "pwfp1:aaaa", 0),
        ("g5", "dec", "deception", 2.2, "pwfp1:bbbb", 0),
    ]
    ids = []
    for gid, probe, behaviour, score, fp, age in specs:
        created = (now - dt.timedelta(days=age, minutes=1)).isoformat(timespec="milliseconds")
        ids.append(
            store.record(
                make_incident(
                    generation_id=gid,
                    probe=probe,
                    behaviour=behaviour,
                    score=score,
                    model_fingerprint=fp,
                    created_at=created,
                    response=f"response of {gid} " + "x" * 300,
                )
            )
        )
    store.claim(ids[1], "alice")
    store.label(ids[2], "bob", "false_positive")
    store.label(ids[3], "alice", "true_positive")
    store.resolve(ids[3], "alice")

    def q(**kw):
        return store.queue(QueueFilter(**kw), per_page=kw.pop("per_page", 50) if "per_page" in kw else 50)

    page = store.queue()
    assert [r.id for r in page.rows] == [5, 4, 3, 2, 1]  # newest first
    assert page.total == 5 and page.counts == {"open": 2, "acknowledged": 2, "resolved": 1}
    assert page.rows[0].snippet.startswith("response of g5") and len(page.rows[0].snippet) == 160
    assert [r.id for r in q(probe="dec").rows] == [5, 2, 1]
    assert [r.id for r in q(behaviour="refusal").rows] == [3]
    assert [r.id for r in q(status="open").rows] == [5, 1]
    assert q(status="open").counts == {"open": 2, "acknowledged": 2, "resolved": 1}  # tabs keep every status
    assert [r.id for r in q(status="unresolved").rows] == [5, 3, 2, 1]
    assert [r.id for r in q(label="unlabelled").rows] == [5, 2, 1]
    assert [r.id for r in q(label="false_positive").rows] == [3]
    assert [r.id for r in q(score_min=1.0, score_max=3.4).rows] == [5, 2, 1]
    assert [r.id for r in q(since="3d").rows] == [5, 4, 3, 2]
    assert [r.id for r in q(until=(now - dt.timedelta(days=5)).isoformat()).rows] == [1]
    assert [r.id for r in q(since=(now - dt.timedelta(days=1, hours=1)).strftime("%Y-%m-%dT%H:%M")).rows] == [5, 4, 3]
    assert [r.id for r in q(model="pwfp1:bb").rows] == [5, 3]
    assert [r.id for r in q(reviewer="alice").rows] == [4, 2]
    assert [r.id for r in q(reviewer="bob").rows] == [3]
    assert [r.id for r in q(probe="dec", status="open", score_min=2.0).rows] == [5]
    paged = store.queue(QueueFilter(), page=2, per_page=2)
    assert [r.id for r in paged.rows] == [3, 2] and paged.pages == 3 and paged.total == 5
    assert store.queue(QueueFilter(), page=9, per_page=2).rows == []
    for bad, match in (
        ({"status": "closed"}, "status 'closed' not one of"),
        ({"label": "yes"}, "label 'yes' not one of"),
        ({"score_min": 3.0, "score_max": 1.0}, "score range is empty"),
        ({"since": "last tuesday"}, "since 'last tuesday' is not a time"),
    ):
        with pytest.raises(ReviewError, match=match):
            store.queue(QueueFilter(**bad))
    assert store.facets() == {
        "probe": ["af", "dec", "ref"],
        "behaviour": ["alignment_faking", "deception", "refusal"],
        "model": ["pwfp1:aaaa", "pwfp1:bbbb"],
        "reviewer": ["alice", "bob"],
    }


def test_delete_and_retention_remove_rows_trail_and_context(store):
    now = dt.datetime.now(dt.timezone.utc)
    old = store.record(make_incident(generation_id="old", created_at=(now - dt.timedelta(days=40)).isoformat()))
    a = store.record(make_incident(generation_id="ga"))
    b = store.record(make_incident(generation_id="ga", probe="ref"))
    c = store.record(make_incident(generation_id="gc"))
    store.comment(a, "alice", "looked at it")
    store.comment(old, "alice", "old one")
    assert store.purge_older_than(30) == 1 and store.count() == 3
    assert store.events(old) == []
    assert store.delete(ids=[a]) == 1
    assert store.events(a) == [] and store.get(b).tokens == [[7, 101], [8, 102]]  # the generation still has b
    assert store.delete(generation_id="ga") == 1
    with store.engine.connect() as conn:
        gens = {r[0] for r in conn.execute(text("SELECT generation_id FROM generations"))}
    assert gens == {"gc"}  # the context of deleted generations went with them
    with pytest.raises(ValueError, match="delete needs"):
        store.delete()
    assert store.delete(everything=True) == 1 and store.count() == 0
    assert c  # (ids are not reused)


def test_text_policy_none_keeps_no_text_and_no_token_ids(store_location):
    store = IncidentStore.open(store_location, store_text="none")
    i = store.record(make_incident())
    row = store.get(i)
    assert (row.prompt, row.response, row.tokens) == (None, None, [])
    assert row.token_scores == [[7, 0.5], [8, 2.5]] and row.context["dec"]["score"] == 2.5
    store.close()
    with pytest.raises(IncidentStoreError, match="store-text mode 'shout'"):
        IncidentStore.open(store_location, store_text="shout")


def test_mark_interrupted(store_location):
    store = IncidentStore.open(store_location, writer="pod-a")
    other = IncidentStore.open(store_location, writer="pod-b")
    mine = store.record_alert(make_incident(generation_id="m", generation_status="open"))
    theirs = other.record_alert(make_incident(generation_id="t", generation_status="open"))
    done = store.record(make_incident(generation_id="d"))
    n = store.mark_interrupted()
    status = {i: store.get(i).generation_status for i in (mine, theirs, done)}
    if store.backend == "sqlite":  # one embedded writer: every open row was its own
        assert n == 2 and status == {mine: "interrupted", theirs: "interrupted", done: "closed"}
    else:  # a fleet: another live sidecar's open row is left alone until it goes stale
        assert n == 1 and status == {mine: "interrupted", theirs: "open", done: "closed"}
        assert store.mark_interrupted(stale_after_s=3600) == 0
        assert store.mark_interrupted(stale_after_s=0) == 1
        assert store.get(theirs).generation_status == "interrupted"
    store.close()
    other.close()


def test_review_stats(store):
    now = dt.datetime.now(dt.timezone.utc)
    for k, (probe, age_h) in enumerate([("dec", 5), ("dec", 3), ("dec", 1), ("ref", 2), ("ref", 0)]):
        created = (now - dt.timedelta(hours=age_h)).isoformat()
        store.record(make_incident(generation_id=f"g{k}", probe=probe, created_at=created))
    store.label(1, "a", "true_positive")
    store.resolve(1, "a")
    store.label(2, "a", "false_positive")
    store.label(3, "a", "true_positive")
    store.label(4, "a", "unsure")
    stats = store.review_stats(now=now)
    assert stats.counts == {"open": 1, "acknowledged": 3, "resolved": 1}
    assert stats.oldest_age_s["acknowledged"] == pytest.approx(3 * 3600, abs=2)
    assert stats.oldest_age_s["open"] == pytest.approx(0, abs=2) and "resolved" not in stats.oldest_age_s
    assert stats.labels == {("dec", "true_positive"): 2, ("dec", "false_positive"): 1, ("ref", "unsure"): 1}
    assert stats.precision() == {"dec": pytest.approx(2 / 3)}  # ref has no true/false verdict yet


def test_schema_matches_the_tables_and_newer_schemas_are_refused(store_location):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from probewatch.server.store.tables import metadata

    store = IncidentStore.open(store_location)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == [], diff  # the migrations build exactly what tables.py declares
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    store.close()
    for readonly in (False, True):
        with pytest.raises(IncidentStoreError, match="schema revision 9999, unknown to this probewatch"):
            IncidentStore.open(store_location, readonly=readonly)


def test_pseudonym_key_is_stable_and_not_in_the_database(store_location):
    with IncidentStore.open(store_location, store_text="redacted") as store:
        first = store.policy.pseudonym("alice")
    with IncidentStore.open(store_location, store_text="none") as store:
        assert store.policy.pseudonym("alice") == first and first.startswith(f"anon:{store.policy.key_id}:")
        assert store.legacy_pseudonym_key() is None  # the key lives in a file, never in store_meta
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM store_meta WHERE key = 'pseudonym_key'")).scalar() == 0
