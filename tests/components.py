"""What a test does when a real component it runs (Prometheus, PostgreSQL, Chromium, openssl, the
public datasets) is not on the machine.

By hand (`pytest ...`) it skips with a message that says how to get the component. Under
`make test` — and so in CI — `PROBEWATCH_TESTS_REQUIRE_ALL=1` is set and the same call fails: a
check that needs a real component must not pass by being skipped.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ALL = "PROBEWATCH_TESTS_REQUIRE_ALL"


def required() -> bool:
    return os.environ.get(REQUIRE_ALL, "").strip() == "1"


def missing(message: str) -> NoReturn:
    """Skip (by hand) or fail (under `make test`) because a component is absent."""
    if required():
        pytest.fail(f"{message} [{REQUIRE_ALL}=1: make test needs every component]", pytrace=False)
    pytest.skip(message)
