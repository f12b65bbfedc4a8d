"""What the sidecar keeps of a generation's text: `--store-text full|redacted|none`.

A probe sidecar sees the prompts and responses of flagged generations, and the client can attach
metadata such as the HTTP `user` field. Incident rows and webhook payloads are where that text
would outlive the request, so both go through one `TextPolicy`:

- `full`: prompt, response and metadata as the client sent them (capped at `max_chars` each);
- `redacted` (the chart's default): prompt and response with pattern-matched personal data and
  secrets replaced by a tag (`[email]`, `[phone]`, `[card]`, `[iban]`, `[ssn]`, `[ip]`,
  `[secret]`, `[credentials]`, `[password]`, `[dob]`, `[passport]`, `[national-id]`); metadata
  values redacted the same way;
- `none`: no prompt or response at all (stored as NULL); metadata values redacted.

In `redacted` and `none`, the values of metadata keys that identify a person (a pattern set:
server/store/metadata_keys.py, operators extend it) are replaced by a keyed pseudonym
(`anon:<key id>:` + 16 hex of HMAC-SHA256 with a key kept outside the store,
server/store/pseudonym_keys.py): reviewers can still see that two incidents came from the same
user without learning who it is.

Redaction is pattern-based (regular expressions, a Luhn check for card numbers): it catches
structured identifiers, credentials, and passwords, dates of birth, passport and national id
numbers after a keyword that names them ("my password is ...", "DOB ...", "passport no. ..."),
not names or street addresses. `none` is the mode for
data that must not be kept at all. Redaction takes time linear in the text on any input (no rule
backtracks over what it has already read) and reads at most `REDACT_MAX_CHARS` characters.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probewatch.server.store.metadata_keys import PrivateKeys
from probewatch.server.store.privacy_rules import KEYWORD_RULES, TRAILING_RULES
from probewatch.server.store.pseudonym_keys import key_id, pseudonym, read_key_file

STORE_TEXT_MODES = ("full", "redacted", "none")
DEFAULT_MAX_CHARS = 65536
MAX_TOKEN_CHARS = 256  # one token's stored text (a real token is a few characters; a client may send more)


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return "[card]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else match.group(0)


def _phone(match: re.Match[str]) -> str:
    return "[phone]" if len(re.sub(r"\D", "", match.group(0))) >= 9 else match.group(0)


def _ipv6_compressed(match: re.Match[str]) -> str:
    """`2001:db8::1` is an address; `a::b` (C++, Rust paths) is not: 3+ groups or a 4-digit group."""
    groups = [g for g in match.group(0).split(":") if g]
    return "[ip]" if len(groups) >= 3 or any(len(g) == 4 for g in groups) else match.group(0)


_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"

# Every rule below runs in time linear in the length of the text, whatever the text (issue 20:
# `"a-" * 32768` took 76 s through the e-mail and base64 rules). Two kinds of rule:
#
# - a plain `re.sub` where the pattern cannot backtrack more than a bounded amount per start and
#   the stretches the starts scan do not overlap (each rule's comment says why);
# - a linear scan for the maximal runs a rule can match inside, one bounded check per run, for the
#   three rules whose regular expression alone re-scanned the same run from every position in it
#   (e-mail, JWT, base64 secret). Each such rule replaces exactly what its old expression did: a
#   failed match at the first candidate of a run means every later candidate in that run fails.
#
# Only `re` syntax of Python 3.10 (no possessive quantifiers or atomic groups): requires-python.


#: one replacement a rule makes: (start, end, new text) in the text the rule read
Edit = tuple[int, int, str]


class _Sub:
    """A `re.sub` rule; `edits` lists what it replaces (token texts need where, not only the result)."""

    def __init__(self, pattern: str, replacement: str | Callable[[re.Match[str]], str]) -> None:
        self.compiled = re.compile(pattern)
        self.replacement = replacement

    def __call__(self, text: str) -> str:
        return self.compiled.sub(self.replacement, text)

    def edits(self, text: str) -> Iterator[Edit]:
        for m in self.compiled.finditer(text):
            new = self.replacement(m) if callable(self.replacement) else m.expand(self.replacement)
            if new != m.group(0):
                yield m.start(), m.end(), new


class _Spans:
    """A rule that replaces what a linear span scan finds with one tag (e-mail, JWT, base64 secret)."""

    def __init__(self, spans: Callable[[str], Iterator[tuple[int, int]]], tag: str, needs: str = "") -> None:
        self.spans, self.tag, self.needs = spans, tag, needs

    def __call__(self, text: str) -> str:
        return _replace_spans(text, self.spans(text), self.tag) if self.needs in text else text

    def edits(self, text: str) -> Iterator[Edit]:
        if self.needs in text:
            for start, end in self.spans(text):
                yield start, end, self.tag


def _sub(pattern: str, replacement: str | Callable[[re.Match[str]], str]) -> _Sub:
    return _Sub(pattern, replacement)


def _replace_spans(text: str, spans: Iterator[tuple[int, int]], tag: str) -> str:
    """`text` with each (start, end) of `spans` (in order, not overlapping) replaced by `tag`."""
    out: list[str] = []
    last = 0
    for start, end in spans:
        out += (text[last:start], tag)
        last = end
    if not out:
        return text
    out.append(text[last:])
    return "".join(out)


# E-mail: [local]+@domain. The old single expression `[local]+@domain` started at every character
# of a run of local-part characters and scanned to the run's end before failing on the missing `@`.
# Here a local part is the maximal run of local characters that ends right before an `@` (the
# look-behind lets a scan start only where a run starts, so each character is read at most twice),
# clipped to the end of the previous address; the domain is matched once after the `@`. The
# domain's labels cannot contain `.`, so its backtracking is linear in the run after the `@`, and
# that run belongs to that `@` alone.
_EMAIL_LOCAL = re.compile(r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+(?=@)")
_EMAIL_DOMAIN = re.compile(r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def _email_spans(text: str) -> Iterator[tuple[int, int]]:
    last = 0
    for local in _EMAIL_LOCAL.finditer(text):
        start, at = max(local.start(), last), local.end()
        if start < at and (domain := _EMAIL_DOMAIN.match(text, at + 1)) is not None:
            last = domain.end()
            yield start, last


_redact_emails = _Spans(_email_spans, "[email]", "@")


# JWT: eyJ<seg>.<seg>.<seg>, each segment 5+ of [A-Za-z0-9_-]. Every `\beyJ` in one segment run
# ("eyJ-eyJ-eyJ-...") used to scan that run to its end again. A segment run can only be followed by
# the rest of a token in one way, so only its first `\beyJ` is tried (a later one leaves a shorter
# first segment and the same rest); the check reads that run and the two after it.
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
_JWT_START = re.compile(r"\beyJ")
_JWT_SEGMENT_RUN = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{8,}")  # eyJ + 5 at least


def _jwt_spans(text: str) -> Iterator[tuple[int, int]]:
    last = 0
    for run in _JWT_SEGMENT_RUN.finditer(text):
        if run.start() < last:  # inside the previous token
            continue
        first = _JWT_START.search(text, run.start(), run.end())
        if first is not None and (token := _JWT.match(text, first.start())) is not None:
            last = token.end()
            yield token.span()


_redact_jwts = _Spans(_jwt_spans, "[secret]", "eyJ")


# Base64-like secret: 40+ of [A-Za-z0-9+/_-] with a digit and a letter, from a word boundary, then
# up to two `=`. The two look-aheads used to read the rest of the run from every boundary inside it
# ("a-a-a-...": 32,768 boundaries). The conditions only get harder further into a run (a shorter
# rest, fewer digits and letters), so the old expression is tried once per run of 40+ characters,
# at the run's first word boundary: linear in the run.
_B64 = re.compile(r"\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{40,}={0,2}")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{40,}")
_B64_START = re.compile(r"\b(?=[A-Za-z0-9+/_-])")  # a word boundary inside the run


def _b64_spans(text: str) -> Iterator[tuple[int, int]]:
    for run in _B64_RUN.finditer(text):
        first = _B64_START.search(text, run.start(), run.end())
        if first is not None and (secret := _B64.match(text, first.start())) is not None:
            yield secret.span()


_redact_b64 = _Spans(_b64_spans, "[secret]")


# (name, rule): applied in this order (keyword rules first: a passport number must not become a
# [phone]; then credentials and secrets before the number patterns)
_RULES: list[tuple[str, _Sub | _Spans]] = [
    *((name, _sub(pattern, replacement)) for name, pattern, replacement in KEYWORD_RULES),
    # user:password@ after a scheme: starts only right after "://", and both parts stop at the next
    # "/", which every later start needs, so the scans do not overlap; no part can end in "@" or
    # (the user) in ":", so backing off a part fails at once
    ("credentials", _sub(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)", "[credentials]")),
    ("email", _redact_emails),
    ("jwt", _redact_jwts),
    # a fixed prefix at a word boundary, then a run with nothing after it: it matches or fails
    # within the 10-30 characters of its minimum, and a match consumes what it read
    (
        "secret-prefix",
        _sub(
            r"\b(?:(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,})",
            "[secret]",
        ),
    ),
    # one start per "bearer" word; the blank run after it belongs to that start, the token class has
    # no blanks (backing off the blanks fails at once) and fails within its minimum of 16
    ("bearer", _sub(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*", "Bearer [secret]")),
    # starts only at a word's first character, reads that word once (no `\b` inside a word)
    ("hex", _sub(r"\b[0-9a-fA-F]{32,}\b", "[secret]")),
    ("base64", _redact_b64),
    # bounded: 4 + at most 60 characters per start, one way through the optional blanks
    ("iban", _sub(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b", "[iban]")),
    ("ssn", _sub(r"\b\d{3}-\d{2}-\d{4}\b", "[ssn]")),
    # bounded: at most 37 characters per start; a separator is taken or not, never both ways
    ("card", _sub(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])", _card)),
    # bounded: at most 15 characters per start
    ("ipv4", _sub(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])", "[ip]")),
    # bounded: at most 39 characters per start; a group must run to its ":"
    ("ipv6", _sub(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){4,7}[0-9a-fA-F]{1,4}(?![\w:])", "[ip]")),
    # starts only where a run of hex digits and colons starts (never after a word character or a
    # colon); groups cannot cross "::", so "::" is tried at one place and each side backs off
    # linearly: linear in that run
    (
        "ipv6-compressed",
        _sub(
            r"(?<![\w:])[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*::(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?(?![\w:])",
            _ipv6_compressed,
        ),
    ),
    # bounded: at most 36 characters per start, and at most a few hundred ways to group its digits
    # (3-5 groups of 2-4 after an optional prefix): the slowest rule on digit runs, still linear
    (
        "phone",
        _sub(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?!\w)", _phone),
    ),
    *((name, _sub(pattern, replacement)) for name, pattern, replacement in TRAILING_RULES),
]

#: `redact` reads at most this many characters (4 x `DEFAULT_MAX_CHARS`); the rest is cut off and
#: counted (`…[truncated N chars]`), never returned unredacted. Every rule is linear, so this bounds
#: one call: ~0.42 s for the slowest input tests/server/store/test_privacy_linear.py knows (digit runs
#: that make the phone rule try every grouping, ~1.6 us a character), ~0.08 s for prose (2026-12,
#: one x86 core). `TextPolicy` caps each field before this (`max_chars`, 65536 by default); a
#: larger `--max-text-chars` still stores at most this many characters of redacted text.
REDACT_MAX_CHARS = 4 * DEFAULT_MAX_CHARS


def _truncate(text: str, limit: int) -> tuple[str, str]:
    """(the first `limit` characters, the `…[truncated N chars]` note for the rest, or "")."""
    if len(text) <= limit:
        return text, ""
    return text[:limit], f"…[truncated {len(text) - limit} chars]"


def redact(text: str) -> str:
    """`text` with personal data and secrets the patterns recognise replaced by a tag.

    Linear in `len(text)` on any input, and `text` is cut to `REDACT_MAX_CHARS` first."""
    text, note = _truncate(text, REDACT_MAX_CHARS)
    for _name, rule in _RULES:
        text = rule(text)
    return text + note


@dataclass
class TextPolicy:
    """Applies `--store-text` to what an incident row or a webhook payload keeps."""

    mode: str = "full"
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)  # pseudonym key
    max_chars: int = DEFAULT_MAX_CHARS
    private_keys: tuple[str, ...] = ()  # metadata key patterns pseudonymised beyond the built-in ones

    def __post_init__(self) -> None:
        if self.mode not in STORE_TEXT_MODES:
            raise ValueError(f"store-text mode {self.mode!r} not one of {', '.join(STORE_TEXT_MODES)}")
        self._private = PrivateKeys(self.private_keys)  # ValueError naming a malformed pattern

    @property
    def key_id(self) -> str:
        """The id every pseudonym carries (`anon:<key id>:...`): which key made it."""
        return key_id(self.key)

    def _cap(self, text: str) -> str:
        return "".join(_truncate(text, self.max_chars))

    def text(self, text: str | None) -> str | None:
        """A prompt or response as it may be stored (None: nothing to store)."""
        if text is None or self.mode == "none":
            return None
        text = self._cap(text)
        return redact(text) if self.mode == "redacted" else text

    def token_texts(self, pairs: Sequence[Sequence[Any]]) -> list[list[Any]] | None:
        """[[position, token text], ...] as they may be stored (None: keep none). `redacted` masks the
        tokens a redaction of their joined text covers (server/store/privacy_tokens.py), so an e-mail
        split over many tokens is hidden on each of them and positions stay aligned."""
        if self.mode == "none" or not pairs:
            return None
        positions = [int(p) for p, _ in pairs]
        texts = [str(t)[:MAX_TOKEN_CHARS] for _, t in pairs]
        if self.mode == "redacted":
            from probewatch.server.store.privacy_tokens import mask_tokens

            texts = mask_tokens(texts)
        return [[p, t] for p, t in zip(positions, texts, strict=True)]

    def pseudonym(self, value: str) -> str:
        return pseudonym(self.key, value)

    def is_private_key(self, key: str) -> bool:
        """Whether a metadata key identifies a person (server/store/metadata_keys.py)."""
        return self._private.matches(key)

    def metadata(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """Client metadata as it may be stored: identifying values pseudonymised unless `full`."""
        if self.mode == "full":
            return {k: self._cap(v) for k, v in metadata.items()}
        out = {}
        for key, value in metadata.items():
            if self._private.matches(key):
                out[key] = self.pseudonym(value)
            else:
                out[key] = redact(self._cap(value))
        return out


def policy_without_store(
    mode: str, max_chars: int, private_keys: Sequence[str] = (), key_file: Path | None = None
) -> TextPolicy:
    """The policy of a sidecar with webhooks but no store: the key file's key when one is given (else a
    random key per process: pseudonyms then differ across restarts)."""
    policy = TextPolicy(mode, max_chars=max_chars, private_keys=tuple(private_keys))
    if key_file is not None:
        policy.key = read_key_file(key_file).current
    return policy
