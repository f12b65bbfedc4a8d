"""Log lines cannot be forged by what a client sends.

Clients control generation ids, `Close.abort_reason`, metadata, peer-supplied strings and error text
that end up in log messages; a newline or carriage return in one would start a fake log line (and an
ANSI escape would repaint a terminal). `EscapeControlChars` rewrites every `%`-argument and the message
of each record so control characters appear escaped (`\\n`, `\\x1b`, …); installed on the handlers the
CLI configures (`probewatch.cli.main`) and on the vLLM plugin's handler. Tracebacks are left alone (they
are ours).
"""

from __future__ import annotations

import logging
import re

__all__ = ["EscapeControlChars", "escape", "install"]

_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\u2028\u2029]")


def escape(text: str) -> str:
    """`text` with control characters (tab excepted) written as escapes."""
    return _CONTROL.sub(lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)


class EscapeControlChars(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = escape(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(escape(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: escape(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install(logger: logging.Logger | None = None) -> None:
    """Add the filter to every handler of `logger` (default: the root logger), once."""
    target = logger or logging.getLogger()
    for handler in target.handlers:
        if not any(isinstance(f, EscapeControlChars) for f in handler.filters):
            handler.addFilter(EscapeControlChars())
