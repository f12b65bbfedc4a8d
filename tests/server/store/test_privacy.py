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


# -- issue 20, item 8: prose passwords, dates of birth, passports, national ids, 7-digit phones ----------
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Hi, my password is hunter2 so log in", "Hi, my password is [password] so log in"),
        ("the wifi Password: s3cr3t!, ok", "the wifi Password: [password] ok"),
        ("pwd: correcthorse then pwd=abc", "pwd: [password] then pwd=[password]"),
        ("export DB_PASSWORD=hunter2", "export DB_PASSWORD=[password]"),
        ('{"password": "hunter2", "x": 1}', '{"password": "[password]", "x": 1}'),
        ("my PIN is 4921.", "my PIN is [password]"),
        ("call me at 555-1234 tonight", "call me at [phone] tonight"),
        ("Patient DOB 1990-04-12, ward 4", "Patient DOB [dob], ward 4"),
        ("she was born on 12/04/1990 in Leeds", "she was born on [dob] in Leeds"),
        ("Date of birth: April 12, 1990.", "Date of birth: [dob]."),
        ("birthday 3rd of March, 1985!", "birthday [dob]!"),
        ("my passport number is X1234567 and", "my passport number is [passport] and"),
        ("Passport No. 533380006, expires", "Passport No. [passport], expires"),
        ("NI number QQ 12 34 56 C please", "NI number [national-id] please"),
        ("nino: QQ123456C", "nino: [national-id]"),
        ("national insurance number AB 12 34 56 C", "national insurance number [national-id]"),
        ("my Aadhaar 1234 5678 9012 is linked", "my Aadhaar [national-id] is linked"),
        ("ID card number: T22000129 here", "ID card number: [national-id] here"),
        ("pay to IBAN FR14 2004 1010 0505 0001 3M02 606", "pay to IBAN [iban]"),
    ],
)
def test_redaction_catches_prose_pii(text, expected):
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "Upgrade from 1.2.3 to 1.10.0 (released 2024), see v2.0.1-rc1.",
        "I was born in 1990 and moved in 2004; the 1990-2004 period; 12/2020.",
        "The password is required. A password is a secret; passwords must be long.",
        "Reset your password. The PIN is incorrect; the passcode was changed.",
        "My passport expired in 2020; passport photos cost 10.",
        "sin(30) = 0.5 and sin 3.14159 is 0; ISBN-13 prefix 978-3; call ext. 1234.",
        "The meeting is on 2024-01-15 at 10:30, room 101-A, build 4521.",
        "Pi is 3.1415926 and e is 2.7182818; score 555.1234.",
    ],
)
def test_new_rules_leave_look_alikes(text):
    assert redact(text) == text


LISTED_KEYS = ["user-id", "customer-id", "name", "phone", "session_id"]


@pytest.mark.parametrize(
    "key",
    [
        *LISTED_KEYS,
        "user",
        "User_ID",
        "userId",
        "X-User-ID",
        "customer.id",
        "customerNumber",
        "account_number",
        "e-mail",
        "emailAddress",
        "first_name",
        "lastName",
        "phoneNumber",
        "mobile",
        "sessionId",
        "client_ip",
        "X-Forwarded-For",
        "remote_addr",
        "deviceId",
        "date_of_birth",
    ],
)
def test_identifying_metadata_keys_are_pseudonymised_under_none(key):
    policy = TextPolicy("none", key=b"k" * 32)
    value = "jane.doe-4711"
    stored = policy.metadata({key: value, "tenant": "acme", "route": "/chat", "model": "m1"})
    assert stored[key] == policy.pseudonym(value) and value not in stored[key]
    assert stored[key].startswith(f"anon:{policy.key_id}:") and len(stored[key]) == len("anon:") + 8 + 1 + 16
    assert {k: stored[k] for k in ("tenant", "route", "model")} == {"tenant": "acme", "route": "/chat", "model": "m1"}


def test_operators_extend_the_private_keys():
    plain = TextPolicy("redacted", key=b"k" * 32)
    extended = TextPolicy("redacted", key=b"k" * 32, private_keys=("tenant", "*shard*", "ticket no"))
    meta = {"tenant": "acme", "db_shard": "eu-7", "ticketNo": "T-1", "ticket": "T-2", "route": "/x"}
    assert plain.metadata(meta) == meta
    out = extended.metadata(meta)
    assert [k for k in meta if out[k].startswith("anon:")] == ["tenant", "db_shard", "ticketNo"]
    assert out["ticket"] == "T-2" and out["route"] == "/x"
    for bad in ("us*er", "***", "-"):
        with pytest.raises(ValueError, match="private metadata key pattern"):
            TextPolicy("redacted", private_keys=(bad,))
