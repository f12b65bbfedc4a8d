"""probewatch for vLLM: a `vllm.general_plugins` entry point that monitors every request.

Installing probewatch next to vLLM and setting `PROBEWATCH_SIDECAR` is all it takes: `vllm serve`
and `LLM(...)` load the plugin in every process (vLLM's `load_general_plugins`); on each model
runner it captures the probe layers of every monitored request — prompt and generated tokens,
under continuous batching, chunked prefill and prefix caching — and streams rows or pushed-down
projections to the sidecar through the shared client (`probewatch.server.client`).

Every model runner the installed vLLM ships (V1, V2, the standalone CPU runner) is patched when its
contract holds (`adapters`, `contract`); whichever runner vLLM then picks engages at model load.
`PROBEWATCH_DISABLE=1` leaves vLLM untouched: the plugin returns before importing anything of it.
Any failure while installing or capturing is logged and turns monitoring off; it never reaches the
engine. docs/live.md ("vLLM") has the details and the gap report.
"""

from __future__ import annotations

import logging

from probewatch import envs

log = logging.getLogger(__name__)


def register() -> None:
    """The entry point (`vllm.general_plugins`: probewatch = probewatch.server.client.vllm_plugin:register)."""
    _log_to_stderr()
    if envs.monitoring_disabled():
        log.info("probewatch: PROBEWATCH_DISABLE is set: the vLLM plugin does nothing")
        return
    try:
        from probewatch.server.client.vllm_plugin.adapters import install

        report = install()
        log.debug(
            "probewatch: runner adapters patched %s, absent %s, broken %s", report.patched, report.absent, report.broken
        )
    except Exception:
        log.exception("probewatch: the vLLM plugin could not install itself; the engine runs unmonitored")


def _log_to_stderr() -> None:
    """Make the plugin's INFO lines (monitoring ON/OFF, captured layers) visible in vLLM's output.

    vLLM configures only its own `vllm` loggers; without a handler Python would print WARNING and
    above only. Nothing is added when the application configured logging itself.
    """
    plugin_log = logging.getLogger("probewatch")
    if plugin_log.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(asctime)s [probewatch] %(message)s", "%m-%d %H:%M:%S"))
    from probewatch.logsafe import EscapeControlChars

    handler.addFilter(EscapeControlChars())  # request ids and metadata come from callers
    plugin_log.addHandler(handler)
    plugin_log.setLevel(logging.INFO)
    plugin_log.propagate = False


def results() -> dict:
    """Handles of the generations this process monitors or monitored lately, by vLLM request id.

    Only useful where the model runner lives in the caller's process (`LLM(...)` with
    `VLLM_ENABLE_V1_MULTIPROCESSING=0`); otherwise read the sidecar (/metrics, incidents).
    """
    from probewatch.server.client.vllm_plugin.capture import all_results

    return all_results()


__all__ = ["register", "results"]
