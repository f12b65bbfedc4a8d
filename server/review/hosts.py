"""Which Host headers the review app answers: the defence against DNS rebinding.

Without it a web page on `attacker.example` can re-point its own name at 127.0.0.1 and read a
loopback review app that needs no sign-in (`--reviewer`, the laptop default) with the victim's
browser: the requests arrive with `Host: attacker.example`. So a request whose Host names a host
outside the allow-list is answered 400 (counted in `probewatch_review_rejected_hosts_total`)
before any route runs.

- Names are compared without the port (a rebinding page always carries its own *name*; the port
  adds nothing) and case-insensitively; `*.example.com` allows the subdomains, `*` allows any host.
- An IP-literal Host (`10.0.3.7:8080`, `[::1]`) is always allowed: a browser sends one only to a
  page loaded from that very address, so it cannot come from rebinding; kubelet probes and
  Prometheus scrapes reach a pod by its IP and keep working.
- A request without a Host header is allowed (browsers always send one).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from probewatch.errors import ProbewatchError

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("", "0.0.0.0", "::", "*")
_NAME = re.compile(r"^(\*\.)?[a-z0-9_]([a-z0-9_.-]{0,252})$|^\*$")


class AllowedHostError(ProbewatchError):
    """An --allowed-host entry is not a host name (e.g. a URL or a path)."""


def host_name(value: str) -> str:
    """`Host` header or allow-list entry -> the bare lower-case name: no port, no brackets, no final dot."""
    text = value.strip().lower()
    if text.startswith("["):  # [v6] or [v6]:port
        return text[1 : text.find("]")] if "]" in text else text
    if text.count(":") == 1:  # name:port (a bare v6 address has several colons)
        text = text.split(":", 1)[0]
    return text.rstrip(".")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def allowed_hosts(bind_host: str, extra: Iterable[str] = ()) -> tuple[str, ...]:
    """The allow-list for a server bound to `bind_host`: that host (unless a wildcard bind), the
    loopback names and `extra`, normalised; AllowedHostError for an entry that is not a host."""
    entries = [*([] if bind_host.strip() in WILDCARD_BINDS else [bind_host]), *LOCAL_HOSTS, *extra]
    out: list[str] = []
    for entry in entries:
        name = host_name(entry)
        if "/" in entry or "@" in entry or not (is_ip(name) or _NAME.match(name)):
            raise AllowedHostError(
                f"--allowed-host {entry!r} is not a host name (examples: review.example.com, "
                "*.example.com, 10.0.0.5; no scheme or path)"
            )
        if name not in out:
            out.append(name)
    return tuple(out)


def host_permitted(header: str | None, allowed: Sequence[str]) -> bool:
    """Whether a request with this Host header may be answered (see the module doc)."""
    if header is None or "*" in allowed:
        return True
    name = host_name(header)
    if is_ip(name) or name in allowed:
        return True
    return any(a.startswith("*.") and name.endswith(a[1:]) for a in allowed)


def rejected_hosts_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "probewatch_review_rejected_hosts_total",
        "Requests refused because their Host header is not an allowed host (DNS rebinding defence).",
        registry=registry,
    )


class HostGuard:
    """ASGI middleware: 400 for a Host outside `allowed` (HTTP and WebSocket), counted in `rejected`."""

    def __init__(self, app: ASGIApp, allowed: Sequence[str], rejected: Counter) -> None:
        self.app, self.allowed, self.rejected = app, tuple(allowed), rejected

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or ()).get(b"host")
            header = None if raw is None else raw.decode("latin-1")
            if not host_permitted(header, self.allowed):
                self.rejected.inc()
                response = PlainTextResponse(
                    "400 Bad Request: this Host is not served here (probewatch review --allowed-host)\n",
                    status_code=400,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
