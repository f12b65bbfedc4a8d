"""What every runner adapter is: a name, the module whose presence selects it, its contract, a patch.

An adapter is thin: it wraps a handful of its runner's methods at class level (once per process,
idempotent), reads the runner's bookkeeping into the core's `StepView` / `RunnerFacts`, and hands
everything else to `probewatch.server.client.vllm_plugin.capture` and `engage`. A wrapper never raises into the
engine: a failure is logged and that step (or engine) goes unmonitored.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from collections.abc import Callable
from typing import Any

from probewatch.server.client.vllm_plugin.contract import Requirement

log = logging.getLogger(__name__)

PATCHED = "_probewatch_patched"  # class attribute marking a patched class (idempotence)


class RunnerAdapter:
    """Subclasses set `name`, `module`, `cls`, `contract`, `summary` and implement `patch`."""

    name: str = ""
    module: str = ""  # its presence in the installed vLLM selects the adapter (feature detection)
    cls: str = ""
    summary: str = ""
    contract: tuple[Requirement, ...] = ()

    def available(self) -> bool:
        try:
            return importlib.util.find_spec(self.module) is not None
        except (ImportError, ValueError):  # a missing parent package
            return False

    def runner_class(self) -> type:
        return getattr(importlib.import_module(self.module), self.cls)

    def patch(self) -> bool:
        """Wrap the runner's methods; False when it was already patched in this process."""
        runner_cls = self.runner_class()
        if runner_cls.__dict__.get(PATCHED, False):
            return False
        self._patch(runner_cls)
        setattr(runner_cls, PATCHED, True)
        return True

    def _patch(self, runner_cls: type) -> None:
        raise NotImplementedError


def capture_of(runner: Any) -> Any:
    """The `RunnerCapture` attached to this runner instance, or None."""
    return runner.__dict__.get("_probewatch")


def guarded(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run a capture callback; a failure is logged (with `what` failed) and never reaches the engine."""
    try:
        fn(*args, **kwargs)
    except Exception:
        log.exception("probewatch: %s failed (monitoring of this step skipped)", what)


def wrap_after(cls: type, name: str, after: Callable[..., None]) -> None:
    """`cls.name` runs as before, then `after(self, result, *args, **kwargs)` (guarded)."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def wrapper(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        guarded(f"{cls.__name__}.{name} hook", after, self, result, *args, **kwargs)
        return result

    setattr(cls, name, wrapper)
