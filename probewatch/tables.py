"""Terminal tables that stay readable at 80 columns: what a user copies (ids) and what they compare
(scores, thresholds) is never cut, wrapped or ellipsised; only free text folds.

rich shrinks every wrappable column when a table is wider than the terminal and, once those are
at their minimum, crops the rest, which used to give ids zero width and scores "…". Key and number
columns here are `no_wrap` with a `min_width` of their longest value (so rich cannot shrink them),
text columns fold onto more lines and share what is left (`ratio`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from rich import box
from rich.table import Table
from rich.text import Text


def table(title: str | None = None) -> Table:
    """A table without outer edges or vertical rules: the width goes to the content."""
    return Table(
        title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), collapse_padding=True
    )


def _width(header: str, values: Iterable[str]) -> int:
    return max([len(header), *(len(v) for v in values)])


def key(t: Table, header: str, values: Iterable[str], justify: Any = "left") -> None:
    """An identifier or a number: never shrunk, wrapped or cut."""
    w = _width(header, values)
    t.add_column(header, no_wrap=True, overflow="ignore", min_width=w, justify=justify)


def text(t: Table, header: str, ratio: int = 1, max_width: int | None = None) -> None:
    """Free text: folds onto more lines (long words too) and shares the width left over."""
    t.add_column(header, overflow="fold", ratio=ratio, max_width=max_width)


def fmt(value: Any, digits: int = 4) -> str:
    """A float to `digits` significant digits (`+1.234`, `-0.0123`, `1.2e+05`); anything else as str."""
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:+.{digits}g}"
    return str(value)


def fits(widths: list[int], width: int) -> bool:
    """Whether columns of these minimum widths fit side by side (two characters between columns)."""
    return sum(widths) + 2 * (len(widths) - 1) <= width


def score_text(value: float | None, flagged: bool, pending: str = "-") -> Text:
    """`+1.23` (red and starred when over the probe's threshold), or `pending` when not scored (yet)."""
    if value is None:
        return Text(pending)
    return Text(f"{value:+.2f}*", "bold red") if flagged else Text(f"{value:+.2f}")


def stacked_scores(probes: list[str], scores: dict[str, float], flagged: dict[str, bool], pending: str = "-") -> Text:
    """Every probe's score in one cell, one `probe  score` line each: for terminals too narrow for a
    column per probe (ids and numbers stay whole; only the probe column's padding differs)."""
    pad = max((len(p) for p in probes), default=0)
    out = Text()
    for i, probe in enumerate(probes):
        if i:
            out.append("\n")
        out.append(f"{probe:<{pad}}  ")
        out.append_text(score_text(scores.get(probe), flagged.get(probe, False), pending))
    return out


def stacked_width(probes: list[str]) -> int:
    return max((len(p) for p in probes), default=0) + 2 + len("+00.00*")


def preview(text: str | None, limit: int = 100) -> str:
    """Free text on one logical line, at most `limit` characters (the full text is in `--json` / `show`)."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
