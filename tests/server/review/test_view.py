"""The incident page's heatmap model: token text from ids, and the colour scale."""

from __future__ import annotations

import pytest

from probewatch.server.review.view import colour, colour_scale, token_texts


class ByteTokenizer:
    """Each id is one byte: a multi-byte character spans several tokens (as in byte-level BPE)."""

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=False):
        return bytes(ids).decode("utf-8", errors="replace")


def test_token_texts_keep_multibyte_characters_whole():
    text = "a€b"  # € is three bytes
    ids = list(text.encode())
    tokens = [[10 + i, t] for i, t in enumerate(ids)]
    texts = token_texts(ByteTokenizer(), tokens)
    assert texts == {10: "a", 11: "", 12: "", 13: "€", 14: "b"}  # the character goes to its last byte
    assert "".join(texts[p] for p in sorted(texts)) == text
    assert token_texts(None, [[3, 42]]) == {3: "⟨42⟩"}  # no tokenizer: ids


def test_colour_scale():
    assert colour(None, 1.0) == "" and colour(float("nan"), 1.0) == ""
    assert colour(1.0, 1.0).startswith("background-color: rgb(")  # at the threshold: the "above" hue
    assert colour(-5.0, 1.0).startswith("background-color: rgba(37, 99, 235")  # below: blue
    assert colour(9.0, 1.0) == "background-color: rgb(153, 27, 27); color: #fff"  # saturated deep red
    # saturation at this generation's own extremes
    assert colour_scale({1: 0.5, 2: 1.2, 3: -2.0}, 1.0) == (0.0, -3.0, pytest.approx(0.2))
    # a threshold far below every score: the reds span the flagged tokens' own range
    scale = colour_scale({1: -0.3, 2: 1.5}, -100.0)
    assert scale.floor == pytest.approx(99.7) and scale.high == pytest.approx(101.5)
    shades = [colour(s, -100.0, scale) for s in (-0.3, 1.5)]
    assert shades == [
        "background-color: rgb(251, 146, 60); color: #1f2328",
        "background-color: rgb(153, 27, 27); color: #fff",
    ]
