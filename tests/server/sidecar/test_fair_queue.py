"""The scoring queue: FIFO per client, deficit round robin on bytes across clients, bounded in items."""

from __future__ import annotations

import queue
import threading

import pytest

from probewatch.server.sidecar.fair_queue import FairQueue

KIB = 1 << 10


def _drain(q: FairQueue) -> list:
    out = []
    while True:
        try:
            out.append(q.get_nowait())
        except queue.Empty:
            return out


def test_one_client_is_first_in_first_out_whatever_the_costs():
    q = FairQueue(0, quantum=256 * KIB)
    costs = [8 << 20, 1, 0, 3 << 20, 5]
    for i, cost in enumerate(costs):
        q.put(("a", i), "a", cost)
    assert _drain(q) == [("a", i) for i in range(len(costs))]  # work-conserving: no wait when alone
    assert q.qsize() == 0


def test_a_light_client_waits_for_at_most_one_quantum_of_a_heavy_one():
    q = FairQueue(0, quantum=256 * KIB)
    for i in range(50):
        q.put(("heavy", i), "heavy", 100 * KIB)
    q.put(("light", 0), "light", 9 * KIB)
    order = _drain(q)
    before = order.index(("light", 0))
    assert before <= 3, order[: before + 1]  # 256 KiB / 100 KiB per turn, not 50 chunks
    assert [x for x in order if x[0] == "heavy"] == [("heavy", i) for i in range(50)]


def test_bytes_not_items_are_shared():
    """8 MiB chunks against 9 KiB ones: the small client's whole backlog goes before a second big one."""
    q = FairQueue(0, quantum=256 * KIB)
    for i in range(3):
        q.put(("big", i), "big", 8 << 20)
    for i in range(20):
        q.put(("small", i), "small", 9 * KIB)
    order = _drain(q)
    assert order.index(("small", 19)) < order.index(("big", 1))
    served_bytes_before_last_small = sum(8 << 20 for x in order[: order.index(("small", 19))] if x[0] == "big")
    assert served_bytes_before_last_small <= 8 << 20


def test_control_items_of_a_client_keep_their_place():
    q = FairQueue(0)
    q.put("chunk-1", "c", 4 * KIB)
    q.put("close", "c", 0)
    q.put("other", "d", 1)
    q.put("end", "c", 0)
    order = _drain(q)
    assert [x for x in order if x != "other"] == ["chunk-1", "close", "end"]


def test_bounded_in_items():
    q = FairQueue(2)
    q.put(1, "a")
    q.put(2, "b")
    with pytest.raises(queue.Full):
        q.put(3, "a", timeout=0.05)
    assert q.get() in (1, 2)
    q.put(3, "a", timeout=0.05)  # room again
    with pytest.raises(queue.Empty):
        FairQueue(1).get_nowait()
    with pytest.raises(ValueError):
        FairQueue(1, quantum=0)


def test_threads_deliver_every_item_once_in_per_client_order():
    q = FairQueue(64, quantum=64 * KIB)
    n, clients = 500, ["a", "b", "c"]

    def produce(client: str) -> None:
        for i in range(n):
            q.put((client, i), client, (i % 7) * 40 * KIB, timeout=10)

    threads = [threading.Thread(target=produce, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    got = [q.get() for _ in range(n * len(clients))]
    for t in threads:
        t.join(10)
    for c in clients:
        assert [i for who, i in got if who == c] == list(range(n))
    assert q.qsize() == 0
