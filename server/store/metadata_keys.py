"""Which client metadata keys identify a person: their values become pseudonyms (issue 20, item 8).

An exact list (`user`, `user_id`, ...) let `user-id`, `customerId`, `name` or `session_id` through in
the clear. Keys and patterns are compared as words instead:

- a key is cut into lower-case words at every character that is not a letter or a digit
  (`-`, `_`, `.`, blanks, ...) and at camelCase humps: `X-Customer-ID`, `customer_id`,
  `customerId` and `customer.id` are all the words `customer id`;
- a pattern is cut the same way; it matches a key when its words appear, in order and adjacent,
  among the key's words. A pattern word may start and/or end with `*`: `user*` matches the words
  `user`, `userid`, `username`; `*name` matches `name`, `fullname`; `*addr*` matches `ipaddress`.

`DEFAULT_PRIVATE_KEYS` below is the built-in set (docs/deploy.md, "Private data", lists it);
operators add their own with `--private-metadata-key PATTERN` (repeatable),
`PROBEWATCH_PRIVATE_METADATA_KEYS` (comma-separated) or the chart's
`incidents.privateMetadataKeys`. Matching is a scan of the key's characters and words: linear in
the key, whatever the patterns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

#: the built-in patterns: keys that hold (or point at) a person, an account, a contact, a session
DEFAULT_PRIVATE_KEYS: tuple[str, ...] = (
    # who: users, customers, accounts and other people
    "user*",
    "*user",
    "customer*",
    "account*",
    "acct*",
    "member*",
    "person*",
    "owner*",
    "login*",
    "employee*",
    "patient*",
    "uid",
    "sub",
    "*name",
    "nick*",
    # how to reach them
    "*email*",
    "e mail",
    "mail",
    "*phone*",
    "mobile*",
    "tel",
    "msisdn",
    "*addr*",
    "ip",
    "ipv4",
    "ipv6",
    "forwarded*",
    # what follows them around
    "session*",
    "sid",
    "device*",
    "cookie*",
    # identity documents and the like
    "ssn",
    "dob",
    "birth*",
    "passport*",
    "national*",
)


def key_words(key: str) -> list[str]:
    """`key` as lower-case words: split at non-alphanumerics and camelCase humps (`userID` -> user, id)."""
    words: list[str] = []
    word: list[str] = []
    n = len(key)
    for i, ch in enumerate(key):
        if not (ch.isalnum() or ch == "*"):
            if word:
                words.append("".join(word))
                word = []
            continue
        if word and ch.isupper():
            prev = word[-1]
            nxt = key[i + 1] if i + 1 < n else ""
            # a hump: aB (lower/digit then upper), or ABc (the last upper of a run starts a word)
            if not prev.isupper() or (nxt.islower() and prev.isupper()):
                words.append("".join(word))
                word = []
        word.append(ch)
    if word:
        words.append("".join(word))
    return [w.lower() for w in words]


@dataclass(frozen=True)
class _Word:
    text: str
    prefix: bool  # pattern word ends with * (the key word starts with text)
    suffix: bool  # pattern word starts with * (the key word ends with text)

    def matches(self, word: str) -> bool:
        if self.prefix and self.suffix:
            return self.text in word
        if self.prefix:
            return word.startswith(self.text)
        if self.suffix:
            return word.endswith(self.text)
        return word == self.text


def _compile(pattern: str) -> tuple[_Word, ...]:
    words = key_words(pattern)
    if not words:
        raise ValueError(f"private metadata key pattern {pattern!r} has no letters or digits")
    out = []
    for w in words:
        text = w.strip("*")
        if not text or "*" in text:
            raise ValueError(
                f"private metadata key pattern {pattern!r}: a word may only start and/or end with '*' "
                "(e.g. user*, *name, *addr*)"
            )
        out.append(_Word(text, prefix=w.endswith("*"), suffix=w.startswith("*")))
    return tuple(out)


class PrivateKeys:
    """The built-in patterns plus the operator's: `matches(key)` says whether a key is private."""

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self.extra = tuple(p.strip() for p in extra if p.strip())
        self._patterns = [_compile(p) for p in (*DEFAULT_PRIVATE_KEYS, *self.extra)]

    def matches(self, key: str) -> bool:
        words = key_words(key)
        for pattern in self._patterns:
            span = len(pattern)
            for start in range(len(words) - span + 1):
                if all(p.matches(w) for p, w in zip(pattern, words[start : start + span], strict=True)):
                    return True
        return False


def validate_patterns(patterns: Iterable[str]) -> list[str]:
    """The patterns, stripped; ValueError naming the first malformed one."""
    out = [p.strip() for p in patterns if p.strip()]
    for p in out:
        _compile(p)
    return out
