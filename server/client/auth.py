"""How the client authenticates to its sidecar: the first token of its token file as bearer metadata."""

from __future__ import annotations

from pathlib import Path

from probewatch.token_file import parse_token_file

__all__ = ["bearer_metadata", "read_token_file"]


def read_token_file(path: str | Path) -> str:
    """The first token of a token file (what a client sends)."""
    return parse_token_file(Path(path))[0].decode()


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying `token` (pass as `metadata=` on each call)."""
    return (("authorization", f"Bearer {token}"),)
