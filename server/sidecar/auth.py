"""Bearer-token authentication of the sidecar's gRPC port (`probewatch serve --auth-token-file`).

Anyone who can reach an unauthenticated sidecar can read the probe weight matrices (ListProbes)
and create incidents with text of their choosing. With a token file, every RPC except the
standard health service must carry `authorization: Bearer <token>` metadata; others are
answered UNAUTHENTICATED (server/sidecar/admission.py does the checking). Health stays open because the
kubelet's probes cannot send metadata and it reveals nothing.

The file holds one token per line (blank lines and `#` comments ignored), so a token can be
rotated without downtime: add the new one, roll the clients, remove the old one. The file is
re-read when it changes (a Kubernetes Secret volume updates in place), at most every
`reload_every_s`. Removing a token also ends the open Monitor streams admitted with it: each
stream re-checks its token every housekeeping tick (server/sidecar/servicer.py), so it ends
UNAUTHENTICATED within `reload_every_s` plus one tick (about 3 s by default). Tokens are compared in
constant time.

The file format is probewatch/token_file.py; clients send their token with
server/client/auth.py (`bearer_metadata`) or over TLS with `grpc.access_token_call_credentials`.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from probewatch.token_file import AuthConfigError, parse_token_file

__all__ = ["AuthConfigError", "TokenFile", "bearer_from_metadata"]

log = logging.getLogger(__name__)


class TokenFile:
    """The accepted tokens, re-read from the file when it changes."""

    def __init__(self, path: str | Path, reload_every_s: float = 2.0) -> None:
        self.path = Path(path)
        self.reload_every_s = reload_every_s
        self._lock = threading.Lock()
        self._tokens = parse_token_file(self.path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.reload_every_s:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            self._tokens = parse_token_file(self.path)
            self._stamp = stamp
            log.info("auth token file %s changed: %d token(s) accepted", self.path, len(self._tokens))
        except AuthConfigError as exc:  # keep the previous tokens rather than locking everyone out
            log.error("%s; keeping the previous tokens", exc)

    def valid(self, presented: str | None) -> bool:
        if not presented:
            return False
        with self._lock:
            self._maybe_reload()
            tokens = self._tokens
        candidate = presented.encode()
        ok = False
        for token in tokens:  # no early exit: the time taken does not say which token matched
            ok |= hmac.compare_digest(candidate, token)
        return ok


def bearer_from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    """The token of an `authorization: Bearer <token>` entry, or None."""
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None
