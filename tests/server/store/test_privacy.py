"""`--store-text redacted`: what the redaction patterns catch, and what they leave alone."""

from __future__ import annotations

import pytest

from probewatch.server.store.privacy import TextPolicy, redact


@pytest.mark.parametrize(
    "text, expected",
    [
        ("mail john.doe+x@example.co.uk now", "mail [email] now"),
        ("call +1 (555) 123-4567 or 0151 2345 6789", "call [phone] or [phone]"),
        ("card 4111 1111 1111 1111 exp", "card [card] exp"),
        ("card 4111-1111-1111-1111", "card [card]"),
        ("ssn 123-45-6789", "ssn [ssn]"),
        ("IBAN DE89 3704 0044 0532 0130 00 ok", "IBAN [iban] ok"),
        ("from 192.168.1.20 and 2001:db8::1", "from [ip] and [ip]"),
        ("fe80:0:0:0:202:b3ff:fe1e:8329", "[ip]"),
        ("key sk-abcdefghijklmnop1234", "key [secret]"),
        ("Authorization: Bearer abcdefghijklmnopqrstuvwx", "Authorization: Bearer [secret]"),
        ("aws AKIAIOSFODNN7EXAMPLE", "aws [secret]"),
        ("jwt eyJhbGciOi.eyJzdWIiOiIx.SflKxwRJSMeKKF2QT4", "jwt [secret]"),
        ("sha 0123456789abcdef0123456789abcdef", "sha [secret]"),
        ("https://bob:hunter2@host/x", "https://[credentials]@host/x"),
    ],
)
def test_redaction_catches(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Is the Earth flat? No, it is round.",
        "Meet on 2024-01-15 at 10:30:45, pi is 3.14159, it costs 1,234.56.",
        "std::vector<int> v; x = a::b",
        "Two plus two is four; 12 monkeys; room 101.",
    ],
)
def test_redaction_leaves_ordinary_text(text):
    assert redact(text) == text


def test_policy_metadata_and_modes():
    policy = TextPolicy("redacted", key=b"k" * 32)
    meta = policy.metadata({"user": "alice", "User_ID": "42", "route": "/chat from 10.0.0.7"})
    assert meta["user"] == policy.pseudonym("alice") and meta["user"].startswith("anon:")
    assert meta["User_ID"].startswith("anon:") and meta["route"] == "/chat from [ip]"
    assert TextPolicy("redacted", key=b"z" * 32).pseudonym("alice") != meta["user"]  # keyed per store
    assert TextPolicy("full").metadata({"user": "alice"}) == {"user": "alice"}
    assert TextPolicy("none").text("anything") is None and TextPolicy("full").text(None) is None
