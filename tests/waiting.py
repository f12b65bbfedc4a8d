"""Bounded polling for tests: a condition that does not come true in time fails with what was awaited."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1, retry_errors: bool = False
) -> Any:
    """Poll `predicate` until it returns something truthy (returned); AssertionError after `timeout`.

    With `retry_errors`, an exception from `predicate` counts as "not yet" (a server still starting)
    and the last one is named in the failure.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:
            if not retry_errors:
                raise
            last = exc
        else:
            if value:
                return value
        time.sleep(interval)
    suffix = f" (last error: {last})" if retry_errors else ""
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{suffix}")
