"""A fleet: two `probewatch serve` processes writing to one real PostgreSQL at the same time.

Each sidecar gets 60 generations on its own gRPC stream, concurrently; 20 generation ids are sent
to both (a client retrying on another replica, or two pods seeing one request). Every generation
alerts on all three probes, so the store must end with exactly 3 rows per distinct generation:
nothing lost, nothing duplicated, and both sidecars report the same incident id for a shared one.
"""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from probewatch.server.store import IncidentStore
from tests.deploy.tiny import Service, free_port, make_bundles, probewatch_exe, save_tiny_model, wait_for
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, open_msg

pytestmark = pytest.mark.timeout(240)

PER_SIDECAR = 60
SHARED = 20
PROMPT, GENERATED = 6, 4
PROBES = {"pw-deception": "deception", "pw-refusal": "refusal", "pw-af": "alignment_faking"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("fleet")
    model = save_tiny_model(root / "model")
    bundles = make_bundles(root / "bundles", model, PROBES)
    return root, model, bundles


def _serve(root: Path, folder, bundles, url: str, name: str) -> tuple[Service, Path]:
    port, ready = free_port(), root / f"{name}.ready.json"
    argv = [
        probewatch_exe(),
        "serve",
        "--model",
        str(folder),
        "--bundles",
        *map(str, bundles),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--metrics-port",
        "-1",
        "--incident-db",
        url,
    ]
    argv += ["--ready-file", str(ready)]
    return Service(name, argv, root / f"{name}.log"), ready


def _drive(address: str, fingerprint: str, d: int, gids: list[str], layers: list[int], out: dict) -> None:
    client = StreamClient(address)
    rng = np.random.default_rng(abs(hash(address)) % 2**32)
    n = PROMPT + GENERATED
    for gid in gids:
        client.send(open_msg(gid, fingerprint, prompt_length=PROMPT))
        for layer in layers:
            client.send(chunk_msg(gid, layer, rng.standard_normal((n, d)).astype(np.float32), range(n)))
        client.send(close_msg(gid, prompt="prompt of " + gid, response="response of " + gid))
    for gid in gids:
        summary = client.wait_summary(gid, timeout=120)
        out[gid] = {a.probe_id: a.incident_id for a in summary.alerts}
    client.close()


def test_two_sidecars_one_postgresql_lose_nothing(tiny, postgres):
    root, (model, folder, fingerprint), bundles = tiny
    url = postgres.create_database("fleet")
    services = [_serve(root, folder, bundles, url, f"sidecar-{k}") for k in range(2)]
    try:
        addresses = []
        for service, ready in services:
            info = wait_for(lambda s=service, r=ready: _ready(s, r), timeout=120, what=f"{service.name} to serve")
            addresses.append(info["address"])
        shared = [f"shared-{i}" for i in range(SHARED)]
        gids = [shared + [f"s{k}-{i}" for i in range(PER_SIDECAR - SHARED)] for k in range(2)]
        results: list[dict] = [{}, {}]
        threads = [
            threading.Thread(
                target=_drive,
                args=(addresses[k], fingerprint, model.config.hidden_size, gids[k], [1, 2, 3], results[k]),
            )
            for k in range(2)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join(180)
        assert all(len(r) == PER_SIDECAR for r in results), [len(r) for r in results]
    finally:
        for service, _ in services:
            service.stop()

    distinct = 2 * PER_SIDECAR - SHARED
    store = IncidentStore.open(url, readonly=True)
    rows = store.find(limit=100_000)
    assert len(rows) == store.count() == 3 * distinct  # nothing lost, nothing duplicated
    assert len({(r.generation_id, r.probe) for r in rows}) == 3 * distinct
    assert all(r.generation_status == "closed" and r.response == f"response of {r.generation_id}" for r in rows)
    assert {r.probe for r in rows} == set(PROBES)
    for gid in shared:  # both sidecars name the one row
        assert results[0][gid] == results[1][gid] and all(results[0][gid].values())
    row = store.get(results[0]["s0-0"]["pw-deception"])
    assert row.prompt_length == PROMPT and set(row.context) == set(PROBES)
    assert _writers(store) == {socket.gethostname()}  # each row says which sidecar host wrote it
    store.close()


def _ready(service: Service, ready: Path) -> dict | None:
    if not service.alive():
        raise AssertionError(f"{service.name} exited:\n{service.output()}")
    return json.loads(ready.read_text()) if ready.exists() else None


def _writers(store: IncidentStore) -> set[str]:
    from sqlalchemy import text

    with store.engine.connect() as conn:
        return {r[0] for r in conn.execute(text("SELECT DISTINCT writer FROM incidents"))}
