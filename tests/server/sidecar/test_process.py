"""`probewatch serve` as a real process, signalled and measured from outside: crash-safe incidents
(SIGKILL), graceful drain (SIGTERM), memory that stays bounded under maximum-size input (RSS read
from /proc), private incident data (store-text none, retention at start-up, 0600 files) and the
addresses it binds."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from probewatch.benchmarks.harness import SidecarProcess
from probewatch.cli.main import main
from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.server.store import Incident, IncidentStore
from tests.server.conftest import D_TINY
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, metric_value, open_msg, scrape
from tests.waiting import wait_until

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS and sockets from /proc")


@pytest.fixture
def serve(tmp_path, tiny_fp, tiny_bundles):
    """serve(*extra args) -> a started `probewatch serve` process (stopped at teardown)."""
    started: list[SidecarProcess] = []

    def start(*extra: str, workdir: Path | None = None) -> SidecarProcess:
        workdir = workdir or tmp_path / f"run{len(started)}"
        workdir.mkdir(exist_ok=True)
        args = ["--fingerprint", tiny_fp, "--bundles", *map(str, tiny_bundles), "--metrics-port", "0", *extra]
        process = SidecarProcess(args, workdir)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def hot(tiny_bundles, tiny_fp) -> np.ndarray:
    """A row that scores probe `dec` (layer 1, max, threshold 1.0) at 5.25: an early alert."""
    w = ProbeRuntime(load_bundles(tiny_bundles, expected_fingerprint=tiny_fp)).stacks[1].weight[:, 0].numpy()
    return (w / np.dot(w, w) * 5.0)[None].astype(np.float32)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def listening_address(port: int) -> str:
    """The local address a LISTEN socket on `port` is bound to (/proc/net/tcp and tcp6; v4-mapped shown as v4)."""
    import ipaddress

    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            host_hex, port_hex = fields[1].split(":")
            if int(port_hex, 16) != port or fields[3] != "0A":
                continue
            # each 32-bit word is written in host (little-endian) byte order
            raw = b"".join(bytes.fromhex(host_hex[i : i + 8])[::-1] for i in range(0, len(host_hex), 8))
            address = ipaddress.ip_address(raw)
            mapped = getattr(address, "ipv4_mapped", None)
            return str(mapped or address)
    raise AssertionError(f"nothing listens on port {port}")


def test_sigkill_after_an_early_alert_leaves_the_incident_row(serve, tmp_path, tiny_fp, hot):
    db = tmp_path / "incidents.sqlite3"
    sidecar = serve("--incident-db", str(db))
    client = StreamClient(sidecar.address)
    client.send(open_msg("crash", tiny_fp, 0, tenant="acme"), chunk_msg("crash", 1, hot, [0]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "alert" for r in rs), timeout=30)
    (alert,) = client.of("alert", "crash")
    assert alert.early and alert.incident_id > 0  # recorded before the client was told
    sidecar.proc.send_signal(signal.SIGKILL)
    sidecar.proc.wait(10)
    client.close()
    row = IncidentStore.open(db, readonly=True).get(alert.incident_id)
    assert (row.generation_id, row.probe, row.generation_status, row.early) == ("crash", "dec", "open", True)
    assert row.token_scores == [[0, pytest.approx(5.25, abs=1e-4)]] and row.metadata == {"tenant": "acme"}
    # the next sidecar on the store marks what its predecessor left open
    serve("--incident-db", str(db))
    assert IncidentStore.open(db, readonly=True).get(alert.incident_id).generation_status == "interrupted"


def test_sigterm_lets_an_open_generation_close_with_its_summary(serve, tiny_fp, hot):
    sidecar = serve()  # the default --shutdown-grace (20 s)
    client = StreamClient(sidecar.address)
    client.send(open_msg("drain", tiny_fp, 0), chunk_msg("drain", 1, np.zeros((1, D_TINY), np.float32), [0]))
    client.wait_for(lambda rs: any(r.WhichOneof("msg") == "score" for r in rs), timeout=30)
    sidecar.proc.send_signal(signal.SIGTERM)
    sent_term = time.monotonic()
    time.sleep(1.0)
    # draining: no new stream, no new generation on the open one
    late = StreamClient(sidecar.address)
    late.ended.wait(15)
    assert late.error is not None and late.error.code() == grpc.StatusCode.UNAVAILABLE
    client.send(open_msg("too-late", tiny_fp, 0))
    (refused,) = client.wait_error("too-late", timeout=15)
    assert refused.code_name == "UNAVAILABLE" and "shutting down" in refused.message
    time.sleep(max(0.0, 5.0 - (time.monotonic() - sent_term)))  # the client closes 5 s after SIGTERM
    client.send(chunk_msg("drain", 1, hot, [1]), close_msg("drain", prompt="p", response="r"))
    summary = client.wait_summary("drain", timeout=15)
    assert summary.status == "closed" and summary.tokens_scored == 2 and summary.alerts[0].probe_id == "dec"
    client.ended.wait(15)
    assert client.error is not None and client.error.code() == grpc.StatusCode.UNAVAILABLE
    assert sidecar.proc.wait(15) == 0
    assert time.monotonic() - sent_term < 20  # it did not sit out the whole grace period
    assert "open generations have 20s to close" in sidecar.log_file.read_text()


def test_bounded_memory_private_store_and_bind_addresses(serve, tmp_path, tiny_fp, hot, capsys):
    db = tmp_path / "incidents.sqlite3"
    store = IncidentStore.open(db)
    old = Incident("old-gen", "dec", "deception", 2.0, 1.0, tiny_fp, "1", prompt="ancient secret")
    old.created_at = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(days=40)).isoformat(timespec="milliseconds")
    store.record(old)
    recent = store.record(Incident("recent-gen", "dec", "deception", 2.0, 1.0, tiny_fp, "1"))
    store.close()
    sidecar = serve(
        "--incident-db", str(db), "--store-text", "none", "--retention-days", "30", "--metrics-host", "127.0.0.1"
    )
    pid = sidecar.proc.pid
    # exposure: both ports bound to loopback only
    grpc_port = int(sidecar.address.rsplit(":", 1)[1])
    assert listening_address(grpc_port) == "127.0.0.1" and listening_address(sidecar.metrics_port) == "127.0.0.1"
    # retention ran at start-up
    assert [i.generation_id for i in IncidentStore.open(db, readonly=True).find()] == ["recent-gen"]
    assert IncidentStore.open(db, readonly=True).get(recent).generation_id == "recent-gen"

    client = StreamClient(sidecar.address)
    full_meta = {"tenant": "acme", "blob": "m" * (16384 - 14)}  # the largest metadata accepted
    for i in range(40):  # warm-up: the allocator's pools, protobuf, numpy, the scoring path
        client.send(
            open_msg(f"warm{i}", tiny_fp, 0, **full_meta),
            chunk_msg(f"warm{i}", 1, np.zeros((1, D_TINY), np.float32), [0]),
            close_msg(f"warm{i}"),
        )
    client.wait_summary("warm39", timeout=60)
    time.sleep(1.0)
    before = rss_mb(pid)

    zeros = np.zeros((1, D_TINY), np.float32)
    for i in range(1000):  # maximum-size ids (256 bytes), opened, scored and closed
        gid = f"{i:06d}".ljust(256, "x")
        client.send(open_msg(gid, tiny_fp, 0), chunk_msg(gid, 1, zeros, [0]), close_msg(gid))
    held = [f"meta{i}" for i in range(30)]
    for gid in held:  # 30 generations holding maximum-size metadata at once
        client.send(open_msg(gid, tiny_fp, 0, **full_meta))
    for i in range(30):  # and the attacks of the issue: 4 MiB ids and 8 MiB metadata, refused
        client.send(
            open_msg("I" * (4 << 20) + str(i), tiny_fp, 0)
            if i % 2
            else open_msg(f"big{i}", tiny_fp, 0, blob="B" * (8 << 20))
        )
    client.send(open_msg("hot", tiny_fp, 0, user="alice@example.com"), chunk_msg("hot", 1, hot, [0]))
    client.send(close_msg("hot", prompt="my card is 4111 1111 1111 1111", response="noted"))
    for gid in held:
        client.send(close_msg(gid))
    client.wait_summary(held[-1], timeout=120)
    summaries = client.of("summary")
    assert sum(s.generation_id.endswith("x") and s.status == "closed" for s in summaries) == 1000
    errors = client.of("error")
    assert len(errors) == 30 and {e.code_name for e in errors} == {"INVALID_ARGUMENT"}
    hot_summary = client.wait_summary("hot")
    client.close()
    wait_until(lambda: metric_value(scrape(sidecar.metrics_port), "probewatch_active_streams") == 0, 30, "stream end")
    time.sleep(1.0)
    growth = rss_mb(pid) - before
    with capsys.disabled():  # shown with `pytest -s`: the figure behind the assertion
        print(f"\nsidecar RSS {before:.1f} MB, after the workload +{growth:.1f} MB")
    assert growth < 50, f"RSS grew {growth:.1f} MB"

    # store-text none: the incident keeps no text, and the user is a pseudonym
    incident_id = hot_summary.alerts[0].incident_id
    capsys.readouterr()
    assert main(["incidents", "show", str(incident_id), "--db", str(db), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert shown["prompt"] is None and shown["response"] is None
    assert shown["metadata"]["user"].startswith("anon:") and "alice" not in json.dumps(shown)
    files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
    modes = subprocess.run(["stat", "-c", "%a", *map(str, files)], capture_output=True, text=True, check=True)
    assert modes.stdout.split() == ["600", "600", "600"]
    assert os.stat(db).st_uid == os.getuid()


def test_client_strings_cannot_forge_log_lines(serve, tiny_fp):
    """A Close.abort_reason (and an id) with newlines and an ANSI escape: the sidecar's log keeps one
    line per record, the control characters escaped (issue 20, item 11)."""
    from probewatch.proto.probewatch.v1 import monitor_pb2 as pb

    sidecar = serve()
    client = StreamClient(sidecar.address)
    gid = "forge\nINFO fake: admin logged in"
    client.send(open_msg(gid, tiny_fp, 0))
    reason = "boom\n2026-12-03 00:00:00 CRITICAL probewatch: FORGED LINE\r\x1b[2K"
    client.send(pb.MonitorRequest(close=pb.Close(generation_id=gid, abort_reason=reason)))
    assert client.wait_summary(gid, timeout=15).status == "aborted"
    wait_until(lambda: "the client stopped monitoring it" in sidecar.log_file.read_text(), 15, "the warning")
    log = sidecar.log_file.read_text()
    assert not any(line.startswith(("2026-12-03 00:00:00 CRITICAL", "INFO fake")) for line in log.splitlines())
    (line,) = [ln for ln in log.splitlines() if "the client stopped monitoring it" in ln]
    assert "forge\\nINFO fake" in line and "boom\\n2026-12-03" in line and "\\r\\x1b[2K" in line
    assert "\x1b" not in log
