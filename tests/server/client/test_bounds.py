"""Caller-controlled input cannot switch monitoring off (issue 20, item 1, the bounding half).

The attack: `probewatch run` passes the request's `metadata` (and `user`) to the sidecar's Open; over
64 entries or 16 KiB the sidecar used to refuse the Open and the answer was generated unmonitored. Now
the client bounds ids and metadata to the sidecar's limits before sending (server/client/bounds.py),
counts it, and the generation is monitored like any other (the attack through the real HTTP endpoint:
tests/server/inference/test_app.py)."""

from __future__ import annotations

from probewatch.server.client.bounds import MARKER, bound_generation_id, bound_metadata


def _size(meta: dict[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in meta.items())


def test_metadata_is_bounded_to_the_sidecar_limits_first_entries_first():
    small = {"tenant": "t1", "user": "u"}
    assert bound_metadata(small, 64, 16384) == (small, False)
    many = {f"k{i}": "v" * 10 for i in range(500)}
    out, cut = bound_metadata({"engine": "vllm", **many}, 64, 16384)
    assert cut and len(out) == 64 and next(iter(out)) == "engine" and out["engine"] == "vllm"
    assert out[MARKER] == "438 entries dropped, 0 cut"
    huge = {"user": "é" * 40000, "tenant": "t1", "x" * 500: "y"}
    out, cut = bound_metadata(huge, 64, 16384)
    assert cut and _size(out) <= 16384 and out["tenant"] == "t1"
    assert out["user"] == "é" * 1024  # 2048 bytes, cut on a character boundary
    assert ("x" * 128) in out  # keys are cut too
    assert out[MARKER] == "0 entries dropped, 2 cut"


def test_an_over_long_generation_id_keeps_its_head_and_stays_unique():
    assert bound_generation_id("chatcmpl-abc", 256) == "chatcmpl-abc"
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    ba, bb = bound_generation_id(a, 256), bound_generation_id(b, 256)
    assert len(ba.encode()) <= 256 and ba.startswith("x" * 200) and ba != bb
    assert bound_generation_id(a, 256) == ba  # deterministic
    assert len(bound_generation_id("ü" * 300, 256).encode()) <= 256
