"""What the sidecar keeps of a generation's text: `--store-text full|redacted|none`.

A probe sidecar sees the prompts and responses of flagged generations, and the client can attach
metadata such as the HTTP `user` field. Incident rows and webhook payloads are where that text
would outlive the request, so both go through one `TextPolicy`:

- `full`: prompt, response and metadata as the client sent them (capped at `max_chars` each);
- `redacted` (the chart's default): prompt and response with pattern-matched personal data and
  secrets replaced by a tag (`[email]`, `[phone]`, `[card]`, `[iban]`, `[ssn]`, `[ip]`,
  `[secret]`, `[credentials]`); metadata values redacted the same way;
- `none`: no prompt or response at all (stored as NULL); metadata values redacted.

In `redacted` and `none`, metadata keys that identify a person (`user`, `user_id`, `email`, ...)
are replaced by a keyed pseudonym (`anon:` + 16 hex of HMAC-SHA256 with a per-store random key):
reviewers can still see that two incidents came from the same user without learning who it is.

Redaction is pattern-based (regular expressions, a Luhn check for card numbers): it catches
structured identifiers and credentials, not names or street addresses. `none` is the mode for
data that must not be kept at all.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

STORE_TEXT_MODES = ("full", "redacted", "none")
DEFAULT_MAX_CHARS = 65536
#: metadata keys whose values identify a person: pseudonymised unless the mode is `full`
IDENTIFYING_KEYS = frozenset(
    {"user", "user_id", "userid", "username", "email", "customer", "customer_id", "account", "account_id", "ip"}
)


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
# (pattern, replacement): applied in this order (credentials and secrets before the number patterns)
_RULES: list[tuple[re.Pattern[str], object]] = [
    (re.compile(r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)"), "[credentials]"),
    (re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}"), "[email]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}"), "[secret]"),
    (
        re.compile(
            r"\b(?:(?:sk|pk|rk)-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|xox[abpr]-[A-Za-z0-9-]{10,})"
        ),
        "[secret]",
    ),
    (re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{16,}=*"), "Bearer [secret]"),
    (re.compile(r"\b[0-9a-fA-F]{32,}\b"), "[secret]"),
    (re.compile(r"\b(?=[A-Za-z0-9+/_-]*\d)(?=[A-Za-z0-9+/_-]*[A-Za-z])[A-Za-z0-9+/_-]{40,}={0,2}"), "[secret]"),
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), "[iban]"),
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[ssn]"),
    (re.compile(r"(?<![\d.])(?:\d[ -]?){12,18}\d(?![\d.])"), _card),
    (re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])"), "[ip]"),
    (re.compile(r"(?<![\w:])(?:[0-9a-fA-F]{1,4}:){4,7}[0-9a-fA-F]{1,4}(?![\w:])"), "[ip]"),
    (
        re.compile(
            r"(?<![\w:])[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*::(?:[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{1,4})*)?(?![\w:])"
        ),
        _ipv6_compressed,
    ),
    (re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]?\d{2,4}){2,4}(?!\w)"), _phone),
]


def redact(text: str) -> str:
    """`text` with personal data and secrets the patterns recognise replaced by a tag."""
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)  # type: ignore[call-overload]
    return text


@dataclass
class TextPolicy:
    """Applies `--store-text` to what an incident row or a webhook payload keeps."""

    mode: str = "full"
    key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)  # pseudonym key
    max_chars: int = DEFAULT_MAX_CHARS

    def __post_init__(self) -> None:
        if self.mode not in STORE_TEXT_MODES:
            raise ValueError(f"store-text mode {self.mode!r} not one of {', '.join(STORE_TEXT_MODES)}")

    def _cap(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        return f"{text[: self.max_chars]}…[truncated {len(text) - self.max_chars} chars]"

    def text(self, text: str | None) -> str | None:
        """A prompt or response as it may be stored (None: nothing to store)."""
        if text is None or self.mode == "none":
            return None
        text = self._cap(text)
        return redact(text) if self.mode == "redacted" else text

    def pseudonym(self, value: str) -> str:
        return "anon:" + hmac.new(self.key, value.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:16]

    def metadata(self, metadata: Mapping[str, str]) -> dict[str, str]:
        """Client metadata as it may be stored: identifying values pseudonymised unless `full`."""
        if self.mode == "full":
            return {k: self._cap(v) for k, v in metadata.items()}
        out = {}
        for key, value in metadata.items():
            if key.lower() in IDENTIFYING_KEYS:
                out[key] = self.pseudonym(value)
            else:
                out[key] = redact(self._cap(value))
        return out
