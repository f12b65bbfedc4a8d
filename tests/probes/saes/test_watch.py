"""Watch-list settings: the spec string and the behaviour-derived default from features.json."""

from __future__ import annotations

import json

import pytest

from probewatch.probes.saes import FEATURES_FILENAME, SAEConfigError, behaviour_watchlist, parse_watch_spec


def test_parse_watch_spec():
    assert parse_watch_spec(" l15-topk:12, 345 ; other:7;") == {"l15-topk": [12, 345], "other": [7]}
    assert parse_watch_spec("") == {}
    with pytest.raises(SAEConfigError, match="must look like 'sae-name:12,345'"):
        parse_watch_spec("12,345")
    with pytest.raises(SAEConfigError, match="must be integers"):
        parse_watch_spec("sae:1,x")


def test_behaviour_watchlist(tmp_path):
    assert behaviour_watchlist(tmp_path) == []
    doc = {
        "behaviours": {
            "deception": {"top": [{"id": 5, "auroc": 0.9}, {"id": 7, "auroc": 0.2}, {"id": 9, "auroc": 0.6}]},
            "refusal": {"top": [{"id": 5, "auroc": 0.95}, {"id": 11, "auroc": 0.8}]},
        }
    }
    (tmp_path / FEATURES_FILENAME).write_text(json.dumps(doc))
    assert behaviour_watchlist(tmp_path, per_behaviour=2) == [5, 7, 11]
