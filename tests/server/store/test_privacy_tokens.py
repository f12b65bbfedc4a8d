"""Token texts under the text policy: the tracked redaction replaces exactly what `redact` does, and the
tokens a replaced span covers are masked (tag on the first, █ after) with positions kept."""

from __future__ import annotations

import random

import pytest

from probewatch.server.store.privacy import REDACT_MAX_CHARS, TextPolicy, redact
from probewatch.server.store.privacy_tokens import MASK, mask_tokens, redaction_spans

TEXTS = [
    "mail john.doe+x@example.co.uk now",
    "call +1 (555) 123-4567 or 0151 2345 6789",
    "card 4111 1111 1111 1111 exp; card 4111 1111 1111 1112 (not Luhn)",
    "Authorization: Bearer abcdefghijklmnopqrstuvwx and https://bob:hunter2@host/x",
    "jwt eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4 sha 0123456789abcdef0123456789abcdef",
    "Hi, my password is hunter2 so log in; Patient DOB 1990-04-12, ward 4; nino: QQ123456C",
    "from 192.168.1.20 and 2001:db8::1, IBAN DE89 3704 0044 0532 0130 00 ok, ssn 123-45-6789",
    "Upgrade from 1.2.3 to 1.10.0 (released 2024): nothing to redact here.",
    "",
]


@pytest.mark.parametrize("text", TEXTS)
def test_tracked_redaction_equals_redact_and_spans_point_at_what_it_replaced(text):
    redacted, spans = redaction_spans(text)
    assert redacted == redact(text)
    # cutting the spans out of the original and the tags out of the result leaves the same text
    kept, last = [], 0
    for start, end, tag in spans:
        assert 0 <= last <= start < end <= len(text) and tag
        kept.append(text[last:start])
        last = end
    kept.append(text[last:])
    assert "".join(kept) == _strip_tags(redacted, [tag for _, _, tag in spans])


def _strip_tags(text: str, tags: list[str]) -> str:
    for tag in tags:
        text = text.replace(tag, "", 1)
    return text


@pytest.mark.parametrize("seed", range(5))
def test_mask_tokens_under_any_tokenisation(seed):
    """However the text is cut into tokens, joining the masked tokens minus █ gives the redacted text,
    and the count and order of tokens never change."""
    rng = random.Random(seed)
    text = " ".join(TEXTS)
    cuts = sorted(rng.sample(range(1, len(text)), 200))
    tokens = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    masked = mask_tokens(tokens)
    assert len(masked) == len(tokens)
    assert "".join(masked).replace(MASK, "") == redact(text)


def test_an_email_over_many_tokens_is_masked_on_each_and_a_keyword_stays():
    tokens = ["Write", " to", " john", ".", "doe", "@", "example", ".com", " now"]
    assert mask_tokens(tokens) == ["Write", " to", " [email]", MASK, MASK, MASK, MASK, MASK, " now"]
    tokens = ["my", " password", " is", " hun", "ter2", " ok"]
    assert mask_tokens(tokens) == ["my", " password", " is", " [password]", MASK, " ok"]


def test_text_past_the_redaction_limit_is_masked_not_stored():
    tokens = ["z" * 1000] * (REDACT_MAX_CHARS // 1000 + 1) + ["secret-looking tail", "x"]
    masked = mask_tokens(tokens)
    assert masked[-2:] == [MASK, MASK] and masked[0] == "z" * 1000
    assert masked[-3] == "z" * (REDACT_MAX_CHARS % 1000) + MASK  # the token the limit cuts through


def test_policy_modes():
    pairs = [[10, " mail"], [11, " a@b.io"], [12, "!"]]
    assert TextPolicy("full").token_texts(pairs) == pairs
    assert TextPolicy("redacted").token_texts(pairs) == [[10, " mail"], [11, " [email]"], [12, "!"]]
    assert TextPolicy("none").token_texts(pairs) is None
    # one token's text is capped (a client could send anything)
    assert len(TextPolicy("full").token_texts([[0, "x" * 10_000]])[0][1]) == 256
