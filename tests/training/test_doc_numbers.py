"""The one rule docs/quality.md and the benchmark summaries print numbers by (training/doc_numbers.py)."""

from __future__ import annotations

import math

from probewatch.training.doc_numbers import num, pct


def test_a_missing_number_reads_n_a_whether_none_or_nan():
    assert num(None) == num(math.nan) == pct(None) == pct(math.nan) == "n/a"
    assert num(None, sign=True) == "n/a"


def test_places_and_sign():
    assert num(0.70349) == "0.703" and num(3.6512, 2) == "3.65" and num(-0.0412, 2) == "-0.04"
    assert num(0.0123, sign=True) == "+0.012" and num(-0.038, sign=True) == "-0.038"
    assert pct(0.0849) == "8%" and pct(0.2) == "20%" and pct(0) == "0%"
