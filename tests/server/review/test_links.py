"""What the sidecar writes for the review app: token ids and every probe's scores with each incident,
and the incident page's URL in the webhook payload when a review base URL is configured."""

from __future__ import annotations

import time

import numpy as np
import pytest

from probewatch.proto.codec import encode_array
from probewatch.proto.probewatch.v1 import monitor_pb2 as pb
from probewatch.server.store import IncidentStore
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, close_msg, open_msg


def _hot_rows(sidecar, n: int) -> np.ndarray:
    """Rows whose `dec` score is 5.25 (threshold 1.0): every token is flagged."""
    w = sidecar.runtime.stacks[1].weight[:, 0].numpy()
    return np.repeat((w / np.dot(w, w) * 5.0)[None], n, axis=0).astype(np.float32)


def _chunk(gid: str, layer: int, rows: np.ndarray, positions, token_ids) -> pb.MonitorRequest:
    return pb.MonitorRequest(
        chunk=pb.ActivationChunk(
            generation_id=gid,
            layer=layer,
            kind=pb.PAYLOAD_KIND_RESIDUAL_ROWS,
            positions=list(positions),
            token_ids=list(token_ids),
            payload=encode_array(rows),
        )
    )


def test_incidents_keep_token_ids_and_every_probes_scores(start_sidecar, tiny_fp, tmp_path):
    sidecar = start_sidecar(store_text="full")  # token ids spell the text out: only `full` keeps them
    client = StreamClient(sidecar.address)
    rows1 = _hot_rows(sidecar, 3)
    rows2 = np.zeros((3, D_TINY), np.float32)
    client.send(
        open_msg("g", tiny_fp, 2),
        _chunk("g", 1, rows1, [2, 3, 4], [101, 102, 103]),
        _chunk("g", 2, rows2, [2, 3, 4], [101, 102, 103]),
        close_msg("g", prompt="p", response="r"),
    )
    summary = client.wait_summary("g")
    client.close()
    (alert,) = summary.alerts
    incident = IncidentStore.open(tmp_path / "incidents.sqlite3", readonly=True).get(alert.incident_id)
    assert incident.tokens == [[2, 101], [3, 102], [4, 103]] and incident.prompt_length == 2
    assert set(incident.context) == {"dec", "avg", "ref"}  # the probes that did not alert too
    dec, avg = incident.context["dec"], incident.context["avg"]
    assert dec["flagged"] and dec["score"] == pytest.approx(5.25, abs=1e-4) and dec["layer"] == 1
    assert [p for p, _ in dec["token_scores"]] == [2, 3, 4] and dec["token_selection"] == "response"
    assert not avg["flagged"] and avg["n_tokens"] == 3 and avg["threshold"] == 50.0
    assert incident.context["ref"]["token_selection"] == "prompt_last"


def test_webhook_payload_links_to_the_incident_page(start_sidecar, tiny_fp, hook):
    url, received = hook
    sidecar = start_sidecar(webhook_url=url, review_url="https://review.example.com/pw/")
    client = StreamClient(sidecar.address)
    client.send(open_msg("w", tiny_fp, 0), _chunk("w", 1, _hot_rows(sidecar, 1), [0], [7]), close_msg("w"))
    summary = client.wait_summary("w")
    client.close()
    deadline = time.monotonic() + 10
    while not received and time.monotonic() < deadline:
        time.sleep(0.05)
    (payload,) = received
    incident_id = summary.alerts[0].incident_id
    assert payload["incident_id"] == incident_id
    assert payload["incident_url"] == f"https://review.example.com/pw/incidents/{incident_id}"
