"""The gRPC bearer-token file both sides read (`--auth-token-file` / `PROBEWATCH_AUTH_TOKEN_FILE`).

One token per line, blank lines and `#` comments ignored, each at least `MIN_TOKEN_CHARS` long, so a
token can be rotated without downtime (add the new one, roll the clients, remove the old one). The
sidecar accepts every token in the file (server/sidecar/auth.py); a client sends the first
(server/client/auth.py).
"""

from __future__ import annotations

from pathlib import Path

from probewatch.errors import ProbewatchError

__all__ = ["MIN_TOKEN_CHARS", "AuthConfigError", "parse_token_file"]

MIN_TOKEN_CHARS = 16


class AuthConfigError(ProbewatchError):
    """The token file is missing, unreadable, empty, or holds a token too short to be a secret."""


def parse_token_file(path: Path) -> list[bytes]:
    """Every token in the file, in order; raises AuthConfigError with the reason otherwise."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise AuthConfigError(f"cannot read the auth token file {path}: {exc}") from exc
    tokens = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    if not tokens:
        raise AuthConfigError(f"the auth token file {path} holds no token")
    short = [t for t in tokens if len(t) < MIN_TOKEN_CHARS]
    if short:
        raise AuthConfigError(
            f"the auth token file {path} holds a token of {len(short[0])} characters; use at least "
            f"{MIN_TOKEN_CHARS} random characters (e.g. `openssl rand -hex 32`)"
        )
    return [t.encode() for t in tokens]
