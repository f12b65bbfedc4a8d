"""The queue by flagged generation on SQLite and PostgreSQL: grouping in SQL, counts, every sort order,
text search, the assignee filter and the audited `assign`, "save & next" (keyset), the bulk selection
under a filter, and the filtered export's records."""

from __future__ import annotations

import pytest

from probewatch.server.store import IncidentStore, QueueFilter, ReviewError
from probewatch.server.store.export_lines import incident_lines
from probewatch.server.store.queue import SORTS
from tests.server.review.helpers import seed_grouped
from tests.server.store.factory import make_incident


@pytest.fixture
def store(store_location):
    s = IncidentStore.open(store_location)
    yield s
    s.close()


def test_one_row_per_generation_with_its_probes(store):
    seed_grouped(store, 5)
    store.record(make_incident(generation_id="solo", probe="dec", score=9.0, threshold=1.0, response="a pipe"))
    page = store.generation_queue(per_page=3)
    assert page.total == page.all == 6 and page.pages == 2
    assert [r.generation_id for r in page.rows] == ["solo", "grp-4", "grp-3"]  # newest first
    grp4 = page.rows[1]
    assert [i.probe for i in grp4.incidents] == ["dec-sae", "dec", "ref"]  # highest score first: 8.5, 5.5, 4.25
    assert (grp4.top_score, grp4.top_margin, grp4.n_matching) == (8.5, 8.0, 3)
    assert page.counts == {"open": 6, "acknowledged": 0, "resolved": 0}
    store.label(grp4.incidents[0].id, "alice", "true_positive")  # one probe acknowledged: the generation counts in both
    page = store.generation_queue()
    assert page.counts == {"open": 6, "acknowledged": 1, "resolved": 0} and page.all == 6
    assert next(r for r in page.rows if r.generation_id == "grp-4").status == "open"  # its least advanced incident
    # filtered to one probe: aggregates over that probe's incidents, badges still the whole generation
    only = store.generation_queue(QueueFilter(probe="ref"))
    assert only.total == 5 and all(r.n_matching == 1 and len(r.incidents) == 3 for r in only.rows)
    assert only.rows[0].top_score == 4.25


@pytest.mark.parametrize("sort", SORTS)
def test_sort_orders(store, sort):
    seed_grouped(store, 4)  # grp-k: top score max(1.5 + k, 0.5 + 2k), top margin 2k
    store.record(make_incident(generation_id="tie", probe="dec", score=5.5, threshold=-0.5))  # margin 6 = grp-3's
    rows = store.generation_queue(sort=sort).rows
    got = [r.generation_id for r in rows]
    newest = ["tie", "grp-3", "grp-2", "grp-1", "grp-0"]
    key = {"score": lambda r: r.top_score, "margin": lambda r: r.top_margin, "priority": lambda r: r.top_rank}
    if sort == "newest":
        assert got == newest
    elif sort == "oldest":
        assert got == newest[::-1]
    else:
        f = key[sort.split("_")[0]]
        rank = {g: i for i, g in enumerate(newest)}
        expected = sorted(rows, key=lambda r: ((-1 if sort.endswith("desc") else 1) * f(r), rank[r.generation_id]))
        assert got == [r.generation_id for r in expected]
    # "save & next" walks the same order, one keyset query at a time
    walked, at = [got[0]], got[0]
    while (at := store.next_generation(None, sort, at)) is not None:
        walked.append(at)
    assert walked == got
    # the per-incident queue takes the same orders
    assert len(store.queue(sort=sort).rows) == 13
    with pytest.raises(ReviewError, match="sort 'loud' not one of newest"):
        store.generation_queue(sort="loud")


def test_text_search_is_a_literal_case_insensitive_substring(store):
    seed_grouped(store, 3, text="Answer about the PIPE")
    store.record(make_incident(generation_id="pct", probe="dec", prompt="100% sure", response="x_y"))
    store.record(make_incident(generation_id="none", probe="dec", prompt=None, response=None))
    assert store.generation_queue(QueueFilter(q="pipe")).total == 3
    assert store.queue(QueueFilter(q="pipe")).total == 9  # per incident
    assert [r.generation_id for r in store.generation_queue(QueueFilter(q="0% s")).rows] == ["pct"]
    assert store.generation_queue(QueueFilter(q="%")).total == 1  # % is literal, not a wildcard
    assert store.generation_queue(QueueFilter(q="x_y")).total == 1 and store.queue(QueueFilter(q="x_z")).total == 0
    assert store.generation_queue(QueueFilter(q="question 2")).total == 1  # the prompt too
    with pytest.raises(ReviewError, match="over the 200-character limit"):
        store.queue(QueueFilter(q="a" * 201))


def test_assign_is_audited_and_filters_assigned_to(store):
    seed_grouped(store, 2)
    ids = store.incident_ids(None, ["grp-1"])
    assert len(ids) == 3
    assigned = store.assign(ids[0], "alice", "bob", comment="yours")
    assert (assigned.assignee, assigned.status) == ("bob", "acknowledged")
    event = store.events(ids[0])[-1]
    assert (event.action, event.reviewer, event.value, event.comment) == ("assign", "alice", "bob", "yours")
    assert [r.generation_id for r in store.generation_queue(QueueFilter(assignee="bob")).rows] == ["grp-1"]
    assert store.queue(QueueFilter(assignee="bob")).total == 1 and store.queue(QueueFilter(assignee="carol")).total == 0
    with pytest.raises(ReviewError, match="needs the name"):
        store.assign(ids[1], "alice", "  ")
    store.label(ids[0], "bob", "true_positive")
    store.resolve(ids[0], "bob")
    with pytest.raises(ReviewError, match="resolved; reopen it first"):
        store.assign(ids[0], "alice", "carol")


def test_bulk_selection_and_export_follow_the_filter(store):
    seed_grouped(store, 4)
    sae = store.incident_ids(QueueFilter(probe="dec-sae"), ["grp-0", "grp-2", "nope"])
    assert [store.get(i).probe for i in sae] == ["dec-sae", "dec-sae"]
    lines = list(incident_lines(store, QueueFilter(probe="ref", score_min=3.0)))
    import json

    records = [json.loads(x) for x in lines]
    assert [(r["generation_id"], r["probe"]) for r in records] == [("grp-2", "ref"), ("grp-3", "ref")]  # oldest first
    assert records[0]["tokens"] == [[10, 100], [11, 101]] and records[0]["events"] == []
    store.label(records[0]["id"], "alice", "unsure", comment="hm")
    again = json.loads(next(incident_lines(store, QueueFilter(probe="ref", score_min=3.0))))
    assert [(e["action"], e["value"], e["comment"]) for e in again["events"]] == [("label", "unsure", "hm")]
    # batches: keyset on id gives every row exactly once
    assert [r["id"] for r in store.export_records(batch=5)] == sorted(
        store.incident_ids(None, [f"grp-{k}" for k in range(4)])
    )


def test_priority_filter_and_sort(store):
    """Uncertain results (priority low: in a probe's band, no alert) are filtered and sorted apart from alerts;
    a generation is low only when every matching incident is."""
    for gid, score, priority in (("a1", 2.0, "normal"), ("u1", 0.6, "low"), ("a2", 3.0, "normal"), ("u2", 0.8, "low")):
        store.record(make_incident(generation_id=gid, probe="dec", score=score, threshold=1.0, priority=priority))
    store.record(make_incident(generation_id="mixed", probe="dec", score=0.9, threshold=1.0, priority="low"))
    store.record(make_incident(generation_id="mixed", probe="ref", score=4.0, threshold=2.0))
    low = store.generation_queue(QueueFilter(priority="low"))
    assert [r.generation_id for r in low.rows] == ["mixed", "u2", "u1"] and low.total == 3
    assert [r.priority for r in low.rows] == ["low"] * 3 and [i.priority for i in low.rows[0].incidents] == [
        "normal",
        "low",
    ]
    normal = store.generation_queue(QueueFilter(priority="normal"))
    assert [r.generation_id for r in normal.rows] == ["mixed", "a2", "a1"]
    assert {r.generation_id: r.priority for r in store.generation_queue().rows} == {
        "mixed": "normal",
        "u2": "low",
        "a2": "normal",
        "u1": "low",
        "a1": "normal",
    }
    assert [r.generation_id for r in store.generation_queue(sort="priority_desc").rows] == [
        "mixed",
        "a2",
        "a1",
        "u2",
        "u1",
    ]
    assert [r.generation_id for r in store.generation_queue(sort="priority_asc").rows] == [
        "u2",
        "u1",
        "mixed",
        "a2",
        "a1",
    ]
    assert [
        (r.generation_id, r.priority) for r in store.queue(QueueFilter(priority="low"), sort="priority_asc").rows
    ] == [
        ("mixed", "low"),
        ("u2", "low"),
        ("u1", "low"),
    ]
    walked, at = ["u2"], "u2"
    while (at := store.next_generation(None, "priority_asc", at)) is not None:
        walked.append(at)
    assert walked == ["u2", "u1", "mixed", "a2", "a1"]
    assert [i.generation_id for i in store.find(priority="low")] == ["mixed", "u2", "u1"]
    assert store.get(store.find(generation_id="u1")[0].id).priority == "low"
    with pytest.raises(ReviewError, match="priority 'urgent' not one of low, normal"):
        store.generation_queue(QueueFilter(priority="urgent"))
    with pytest.raises(ValueError, match="priority 'urgent' not one of"):
        store.record(make_incident(generation_id="bad", priority="urgent"))
