"""One incident to record in tests: every field set, any of them overridden by keyword."""

from __future__ import annotations

from typing import Any

from probewatch.server.store import Incident


def make_incident(**overrides: Any) -> Incident:
    fields: dict[str, Any] = {
        "generation_id": "g1",
        "probe": "dec",
        "behaviour": "deception",
        "score": 2.5,
        "threshold": 1.0,
        "model_fingerprint": "pwfp1:" + "ab" * 16,
        "bundle_version": "3",
        "aggregation": "max",
        "token_scores": [[7, 0.5], [8, 2.5]],
        "prompt": "q",
        "response": "a",
        "metadata": {"tenant": "x"},
        "prompt_length": 7,
        "tokens": [[7, 101], [8, 102]],
        "context": {"dec": {"score": 2.5, "threshold": 1.0, "flagged": True}, "ref": {"score": -1.0, "flagged": False}},
    }
    fields.update(overrides)
    return Incident(**fields)
