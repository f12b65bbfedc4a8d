"""The incident page's heatmap model: token text from ids, and the colour scale."""

from __future__ import annotations

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
    assert colour(1.0, 1.0).startswith("background-color: rgba(220, 38, 38, 0.30)")  # at the threshold: red
    assert colour(-5.0, 1.0, -6.0, 4.0).startswith("background-color: rgba(37, 99, 235")  # below: blue
    assert colour(9.0, 1.0, -6.0, 4.0).startswith("background-color: rgba(220, 38, 38, 1.00)")  # saturated
    # saturation at this generation's own extremes
    assert colour_scale({1: 0.5, 2: 1.2, 3: -2.0}, 1.0) == (0.0, -3.0, 1.0)
    # a threshold far below every score: the reds span the flagged tokens' own range
    offset, low, high = colour_scale({1: -0.3, 2: 1.5}, -100.0)
    assert abs(offset - 99.7) < 1e-9 and abs(high - 1.8) < 1e-9
    shades = [colour(s - offset, -100.0, low, high) for s in (-0.3, 1.5)]
    assert "0.30)" in shades[0] and "1.00)" in shades[1]
