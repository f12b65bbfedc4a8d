"""How docs/quality.md and the benchmarks' summaries print a number that may be missing: one rule, so a cell
reads "n/a" (never "None" or "nan%") wherever a run could not measure it."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["num", "pct"]


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, digits: int = 3, sign: bool = False) -> str:
    """`x` to `digits` places ("+" before a positive value with `sign`); "n/a" where unmeasured."""
    return "n/a" if _missing(x) else f"{x:{'+' if sign else ''}.{digits}f}"


def pct(x: Any) -> str:
    """A share as a whole percentage ("7%"); "n/a" where unmeasured."""
    return "n/a" if _missing(x) else f"{100 * x:.0f}%"
