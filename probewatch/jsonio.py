"""JSON in one place: values made JSON-safe, and files written atomically.

JSON has no NaN or Infinity (Python's `json` would write bare `NaN`, which other parsers reject):
non-finite floats become null everywhere probewatch writes JSON (reports, manifests, HTTP bodies).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np


def to_jsonable(obj: Any) -> Any:
    """numpy scalars/arrays, tuples and Paths -> plain JSON values; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """`json.dumps` of `to_jsonable(obj)` that refuses to emit NaN/Infinity."""
    return json.dumps(to_jsonable(obj), allow_nan=False, **kwargs)


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2, **kwargs: Any) -> Path:
    """Write `obj` as JSON to `path` via a temporary file + rename: readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    text = dumps(obj, indent=indent, **kwargs)
    tmp.write_text(text + ("\n" if indent is not None else ""))
    os.replace(tmp, path)
    return path
