"""The pseudonym key lives outside the incident store, is rotatable, and an old store's key is migrated
out (issue 20, item 7); operator metadata key patterns reach the store through `probewatch serve`
(item 8)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import text

from probewatch.benchmarks.harness import SidecarProcess
from probewatch.cli.main import main
from probewatch.probes import ProbeRuntime, load_bundles
from probewatch.server.store import IncidentStore
from probewatch.server.store.pseudonym_keys import PseudonymKeyError, key_id, pseudonym, read_key_file
from tests.server.grpc_helpers import StreamClient, chunk_msg, close_msg, open_msg
from tests.server.store.factory import make_incident

USER = "jane.doe@corp.example"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _record_user(db: Path | str, **open_kw) -> str:
    """The stored pseudonym of USER after one incident recorded through a redacting store."""
    with IncidentStore.open(db, store_text="none", **open_kw) as store:
        row = store.get(store.record(make_incident(generation_id=os.urandom(4).hex(), metadata={"user": USER})))
    return row.metadata["user"]


def _last_json(capsys) -> object:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_key_is_a_private_file_next_to_the_store_and_not_in_it(tmp_path, caplog):
    db = tmp_path / "inc.sqlite3"
    with caplog.at_level(logging.WARNING, logger="probewatch.server.store.pseudonym_keys"):
        stored = _record_user(db)
    key_file = tmp_path / "inc.sqlite3.pseudonym-keys"
    assert "created pseudonym key file" in caplog.text and str(key_file) in caplog.text
    assert _mode(key_file) == 0o600
    ring = read_key_file(key_file)
    assert stored == pseudonym(ring.current, USER) == f"anon:{ring.ids[0]}:{stored.rsplit(':', 1)[1]}"
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("inc.sqlite3") and p != key_file)
    assert ring.current not in raw and ring.current.hex().encode() not in raw and USER.encode() not in raw
    with IncidentStore.open(db) as store, store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM store_meta WHERE key = 'pseudonym_key'")).scalar() == 0
    # a restart with the same key file: the same pseudonym (and no second key made)
    caplog.clear()
    assert _record_user(db) == stored and len(read_key_file(key_file).keys) == 1
    assert "created pseudonym key file" not in caplog.text


def test_explicit_key_file_rotation_and_recomputing_old_pseudonyms(tmp_path, capsys):
    db, key_file = tmp_path / "inc.sqlite3", tmp_path / "secret" / "pseudonym-keys"
    assert main(["incidents", "rotate-key", "--key-file", str(key_file), "--json"]) == 0
    first = _last_json(capsys)
    assert first["older"] == [] and _mode(key_file) == 0o600 and _mode(key_file.parent) == 0o700
    before = _record_user(db, pseudonym_key_file=key_file)
    assert _record_user(db, pseudonym_key_file=key_file) == before  # stable across restarts
    assert before.startswith(f"anon:{first['current']}:")
    assert not (tmp_path / "inc.sqlite3.pseudonym-keys").exists()  # the given file, nothing next to the store

    assert main(["incidents", "rotate-key", "--key-file", str(key_file), "--json"]) == 0
    second = _last_json(capsys)
    assert second["older"] == [first["current"]] and _mode(key_file) == 0o600
    after = _record_user(db, pseudonym_key_file=key_file)
    assert after != before and after.startswith(f"anon:{second['current']}:")
    # the documented check: a value's pseudonym under every key, current first
    assert main(["incidents", "pseudonym", USER, "--key-file", str(key_file), "--json"]) == 0
    rows = _last_json(capsys)
    assert [(r["key_id"], r["current"], r["pseudonym"]) for r in rows] == [
        (second["current"], True, after),
        (first["current"], False, before),
    ]
    with IncidentStore.open(db, readonly=True) as store:
        stored = {i.metadata["user"] for i in store.find()}
    assert stored == {before, after}


def test_old_store_key_keeps_working_until_moved_out(tmp_path, capsys, caplog):
    db = tmp_path / "inc.sqlite3"
    legacy = bytes(range(32))
    IncidentStore.open(db).close()
    with IncidentStore.open(db) as store, store.engine.begin() as conn:  # what an older probewatch wrote
        conn.execute(text("INSERT INTO store_meta (key, value) VALUES ('pseudonym_key', :v)"), {"v": legacy.hex()})
    with caplog.at_level(logging.WARNING, logger="probewatch.server.store.pseudonym_keys"):
        old = _record_user(db)
    assert old == pseudonym(legacy, USER)  # the same hash the old rows carry: reviewers can still group them
    assert "read from the incident store" in caplog.text and "probewatch incidents move-key" in caplog.text
    assert not (tmp_path / "inc.sqlite3.pseudonym-keys").exists()  # no second key while the old one is in use

    assert main(["incidents", "move-key", "--db", str(db), "--json"]) == 0
    moved = _last_json(capsys)
    key_file = tmp_path / "inc.sqlite3.pseudonym-keys"
    assert moved == {"key_file": str(key_file), "moved": key_id(legacy), "current": key_id(legacy)}
    assert read_key_file(key_file).keys == (legacy,) and _mode(key_file) == 0o600
    with IncidentStore.open(db) as store:
        assert store.legacy_pseudonym_key() is None
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="probewatch.server.store.pseudonym_keys"):
        assert _record_user(db) == old  # the same key, now from the file: pseudonyms unchanged
    assert caplog.text == ""
    assert main(["incidents", "move-key", "--db", str(db)]) == 0
    assert "holds no pseudonym key: nothing to move" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("", "holds no key"),
        ("# only a comment\n", "holds no key"),
        ("hunter2\n", "line 1: not a key"),
        ("ab" * 32 + "\nzz" + "ab" * 31 + "\n", "line 2: not a key"),
        ("ab" * 16 + "\n", "line 1: not a key"),  # 16 bytes: too short
    ],
)
def test_missing_or_corrupt_key_file_is_a_clear_cli_error(tmp_path, capsys, content, message):
    key_file = tmp_path / "keys"
    if content is not None:
        key_file.write_text(content)
    db = tmp_path / "inc.sqlite3"
    with pytest.raises(PseudonymKeyError, match=message):
        IncidentStore.open(db, store_text="redacted", pseudonym_key_file=key_file)
    capsys.readouterr()
    assert main(["incidents", "pseudonym", "x", "--key-file", str(key_file)]) == 2
    assert f"pseudonym key file {key_file}" in capsys.readouterr().err
    # `probewatch serve` refuses at start-up, before it loads a model or bundles
    argv = ["serve", "--incident-db", str(db), "--port", "0", "--metrics-port", "-1", "--model", "/nonexistent"]
    assert main([*argv, "--pseudonym-key-file", str(key_file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("probewatch: error: ") and message in err and str(key_file) in err


def test_bad_private_metadata_key_pattern_is_a_cli_error(tmp_path, capsys):
    argv = ["serve", "--incident-db", str(tmp_path / "inc.sqlite3"), "--port", "0", "--model", "/nonexistent"]
    assert main([*argv, "--private-metadata-key", "us*er"]) == 2
    assert "--private-metadata-key: private metadata key pattern 'us*er'" in capsys.readouterr().err


def test_serve_pseudonymises_listed_and_operator_keys_end_to_end(tmp_path, tiny_fp, tiny_bundles, monkeypatch):
    """A real `probewatch serve --store-text none` with a key file and operator patterns (flag and env):
    the listed identifying keys and the operator's keys reach the store as pseudonyms of that key."""
    db, key_file = tmp_path / "inc.sqlite3", tmp_path / "keys"
    assert main(["incidents", "rotate-key", "--key-file", str(key_file)]) == 0
    key = read_key_file(key_file).current
    monkeypatch.setenv("PROBEWATCH_PRIVATE_METADATA_KEYS", "ticket*")
    w = ProbeRuntime(load_bundles(tiny_bundles, expected_fingerprint=tiny_fp)).stacks[1].weight[:, 0].numpy()
    hot = (w / np.dot(w, w) * 5.0)[None].astype(np.float32)  # probe `dec` scores 5.25 > 1.0: an alert
    meta = {
        "user-id": "u-17",
        "customer-id": "c-99",
        "name": "Jane Doe",
        "phone": "+44 20 7946 0958",
        "session_id": "s-abc",
        "tenant": "acme",
        "ticketRef": "T-5",
        "route": "/v1/chat from 10.0.0.7",
    }
    args = ["--fingerprint", tiny_fp, "--bundles", *map(str, tiny_bundles), "--metrics-port", "0"]
    args += ["--incident-db", str(db), "--store-text", "none", "--pseudonym-key-file", str(key_file)]
    with SidecarProcess([*args, "--private-metadata-key", "tenant"], tmp_path) as sidecar:
        client = StreamClient(sidecar.address)
        client.send(open_msg("g1", tiny_fp, 0, **meta), chunk_msg("g1", 1, hot, [0]), close_msg("g1", "p", "r"))
        summary = client.wait_summary("g1", timeout=60)
        client.close()
    assert summary.alerts, "the hot row must raise an alert"
    with IncidentStore.open(db, readonly=True) as store:
        stored = store.get(summary.alerts[0].incident_id).metadata
    private = ["user-id", "customer-id", "name", "phone", "session_id", "tenant", "ticketRef"]
    assert {k: stored[k] for k in private} == {k: pseudonym(key, meta[k]) for k in private}
    assert stored["route"] == "/v1/chat from [ip]"
    assert not (tmp_path / "inc.sqlite3.pseudonym-keys").exists()


def test_processes_creating_the_default_key_at_once_share_one(tmp_path):
    """Two replicas starting on one volume at once: exactly one creates the key file, all use its key."""
    from concurrent.futures import ThreadPoolExecutor

    from probewatch.server.store.pseudonym_keys import ensure_key_file

    path = tmp_path / "keys"
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: ensure_key_file(path), range(8)))
    assert len({ring.current for ring, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keys"] and _mode(path) == 0o600  # no temporary files left
