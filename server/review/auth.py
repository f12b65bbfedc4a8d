"""Who is reviewing: a trusted proxy header, a bearer token, or a local single reviewer.

- **Trusted proxy header** (oauth2-proxy style: `X-Forwarded-User`, `X-Auth-Request-Email`, ...):
  honoured only when configured (`--trusted-header`) and only from a peer in `--trusted-proxy`
  (default loopback: oauth2-proxy runs as a sidecar in the same pod). From anyone else the
  header is ignored, so a client cannot name itself.
- **Bearer tokens** (`--token-file`, e.g. a mounted Secret; one `name:token` per line): an API
  client sends `Authorization: Bearer TOKEN`; a browser logs in once at /login and the token
  rides in an HttpOnly, SameSite=Strict cookie. Tokens compare in constant time.
- **Local reviewer** (`--reviewer NAME`): everyone is NAME; refused by the CLI on a non-loopback
  bind, so it is a laptop/demo mode only.
- **Allowed hosts** (`--allowed-host`): requests naming any other Host are refused before any of
  the above (hosts.py: a web page must not reach a no-sign-in app through DNS rebinding).

State-changing form posts carry a CSRF token (an HMAC of the reviewer with a key kept in the
store, so every replica of the app agrees). An API client authenticated by `Authorization: Bearer
TOKEN` that sends no session cookie needs none (browsers never add that header on their own, so
no other site can forge such a request); one that also sends the sign-in cookie is treated like
the browser it may be and must send the token (X-CSRF-Token) too.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from probewatch.errors import ProbewatchError
from probewatch.server.review.hosts import LOCAL_HOSTS, allowed_hosts

TOKEN_COOKIE = "pw_review_token"
DEFAULT_TRUSTED_PROXIES = ("127.0.0.1/32", "::1/128")


class ReviewAuthError(ProbewatchError):
    """The review app's authentication is misconfigured (unreadable token file, bad proxy network)."""


@dataclass(frozen=True)
class Identity:
    reviewer: str
    via: str  # header | token | local
    cookie: bool = False  # authenticated by a cookie (form posts then need the CSRF token)


@dataclass
class AuthConfig:
    trusted_headers: Sequence[str] = ()
    trusted_proxies: Sequence[str] = DEFAULT_TRUSTED_PROXIES
    tokens: Mapping[str, str] = field(default_factory=dict)  # token -> reviewer
    local_reviewer: str | None = None
    allowed_hosts: Sequence[str] = LOCAL_HOSTS  # Host header names answered (hosts.py); loopback always

    def __post_init__(self) -> None:
        self.allowed_hosts = allowed_hosts("", self.allowed_hosts)
        try:
            self._networks = [ipaddress.ip_network(n, strict=False) for n in self.trusted_proxies]
        except ValueError as exc:
            raise ReviewAuthError(f"--trusted-proxy: {exc}") from None

    @property
    def configured(self) -> bool:
        return bool(self.trusted_headers or self.tokens or self.local_reviewer)

    def describe(self) -> str:
        parts = []
        if self.trusted_headers:
            parts.append(f"header {'/'.join(self.trusted_headers)} from {', '.join(self.trusted_proxies)}")
        if self.tokens:
            parts.append(f"{len(self.tokens)} bearer token(s)")
        if self.local_reviewer:
            parts.append(f"local reviewer {self.local_reviewer!r}")
        return "; ".join(parts) or "none"

    def trusted_peer(self, host: str | None) -> bool:
        if not host:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(address in network for network in self._networks)

    def token_reviewer(self, token: str) -> str | None:
        token = token.strip()
        found = None
        for known, reviewer in self.tokens.items():  # every entry compared: timing says nothing about which
            if hmac.compare_digest(known.encode(), token.encode()):
                found = reviewer
        return found

    def identify(self, headers: Mapping[str, str], cookies: Mapping[str, str], peer: str | None) -> Identity | None:
        """The reviewer of a request, or None (not authenticated)."""
        auth = headers.get("authorization", "")
        if self.tokens and auth.lower().startswith("bearer "):
            reviewer = self.token_reviewer(auth[7:])
            return Identity(reviewer, "token", cookie=bool(cookies.get(TOKEN_COOKIE))) if reviewer else None
        if self.trusted_headers and self.trusted_peer(peer):
            for name in self.trusted_headers:
                value = headers.get(name.lower(), "").strip()
                if value:
                    return Identity(value[:200], "header", cookie=True)
        if self.tokens and cookies.get(TOKEN_COOKIE):
            reviewer = self.token_reviewer(cookies[TOKEN_COOKIE])
            if reviewer:
                return Identity(reviewer, "token", cookie=True)
        if self.local_reviewer:
            return Identity(self.local_reviewer, "local", cookie=True)
        return None


def read_reviewer_tokens(path: str | Path) -> dict[str, str]:
    """`name:token` per line (blank lines and # comments skipped) -> {token: name}."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ReviewAuthError(f"cannot read the review token file {path}: {exc.strerror or exc}") from None
    tokens: dict[str, str] = {}
    for n, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, token = line.partition(":")
        if not sep or not name.strip() or len(token.strip()) < 16:
            raise ReviewAuthError(f"{path}:{n}: expected `reviewer-name:token` with a token of at least 16 characters")
        tokens[token.strip()] = name.strip()
    if not tokens:
        raise ReviewAuthError(f"{path}: no `reviewer-name:token` lines")
    return tokens


def csrf_token(key: bytes, reviewer: str) -> str:
    return hmac.new(key, f"csrf:{reviewer}".encode(), hashlib.sha256).hexdigest()[:40]


def csrf_ok(key: bytes, reviewer: str, token: str | None) -> bool:
    return bool(token) and hmac.compare_digest(csrf_token(key, reviewer), str(token))
