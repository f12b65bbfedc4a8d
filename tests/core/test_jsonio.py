"""JSON written by probewatch is valid JSON: NaN/inf (Python or numpy) become null."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from probewatch.jsonio import dumps, to_jsonable, write_json_atomic


def test_non_finite_values_become_null_whatever_their_type():
    obj = {
        "py": float("nan"),
        "inf": float("-inf"),
        "np64": np.float64("nan"),
        "np32": np.float32("inf"),
        "array": np.array([1.0, np.nan, np.inf]),
        "nested": [(np.int64(3), Path("/x"))],
        "ok": 0.5,
    }
    out = to_jsonable(obj)
    assert out == {
        "py": None,
        "inf": None,
        "np64": None,
        "np32": None,
        "array": [1.0, None, None],
        "nested": [[3, "/x"]],
        "ok": 0.5,
    }
    assert type(out["nested"][0][0]) is int


def test_written_json_parses_strictly(tmp_path):
    path = write_json_atomic(tmp_path / "r.json", {"auroc": np.float64("nan"), "x": [np.float32(1.5)]})
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text

    def refuse(name):
        raise ValueError(name)

    assert json.loads(text, parse_constant=refuse) == {"auroc": None, "x": [1.5]}
    assert not (tmp_path / "r.json.tmp").exists()


def test_dumps_refuses_what_to_jsonable_cannot_fix():
    class Odd(float):
        pass

    assert dumps({"v": Odd(math.inf)}) == '{"v": null}'
    with pytest.raises(TypeError):
        dumps({"v": object()})
