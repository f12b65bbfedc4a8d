"""Runner adapters: one per vLLM model runner the plugin monitors, chosen by what vLLM provides.

| adapter | runner | vLLM |
|---|---|---|
| `vllm-v1` | `v1/worker/gpu_model_runner.GPUModelRunner` (+ V1 CPU subclass) | 0.32, 0.33 |
| `vllm-v2` | `v1/worker/gpu/model_runner.GPUModelRunner` (MRV2, + V2 CPU subclass) | 0.32+ (only GPU runner in 0.34) |
| `vllm-cpu-standalone` | `v1/worker/cpu/standalone_model_runner.StandaloneCPUModelRunner` | 0.34+ |

`install()` patches every runner the installed vLLM ships whose contract (`CONTRACT`, checked on the
installed source) holds; vLLM then instantiates whichever runner it selects and that runner's hooks
engage. No version strings: a runner that exists and matches is monitored, one that changed is
reported by name and left alone (fail-open).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from probewatch.server.client.vllm_plugin.adapters.base import RunnerAdapter
from probewatch.server.client.vllm_plugin.adapters.cpu_standalone import StandaloneCPUAdapter
from probewatch.server.client.vllm_plugin.adapters.v1 import V1Adapter
from probewatch.server.client.vllm_plugin.adapters.v2 import V2Adapter

log = logging.getLogger(__name__)

ADAPTERS: tuple[RunnerAdapter, ...] = (V1Adapter(), V2Adapter(), StandaloneCPUAdapter())


@dataclass
class InstallReport:
    patched: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)  # this vLLM does not ship the runner
    broken: dict[str, list[str]] = field(default_factory=dict)  # contract violations, by adapter


def install() -> InstallReport:
    """Patch the runners this vLLM ships (after checking their contracts); idempotent per process."""
    from probewatch.server.client.vllm_plugin.contract import ENGINE_CONTRACT, SourceTree, check

    report = InstallReport()
    tree = SourceTree.installed()
    if tree is None:
        raise RuntimeError("vLLM is not importable")
    engine = check(ENGINE_CONTRACT, tree)
    if not engine.ok:
        report.broken["engine"] = [str(v) for v in engine.violations]
        log.error(
            "probewatch: this vLLM (%s) breaks the plugin's engine contract; not monitored: %s",
            tree.version(),
            "; ".join(report.broken["engine"]),
        )
        return report
    for adapter in ADAPTERS:
        if not adapter.available():
            report.absent.append(adapter.name)
            continue
        result = check(adapter.contract, tree)
        if not result.ok:
            report.broken[adapter.name] = [str(v) for v in result.violations]
            log.error(
                "probewatch: vLLM %s changed the %s runner the plugin wraps; that runner runs unmonitored: %s",
                tree.version(),
                adapter.name,
                "; ".join(report.broken[adapter.name]),
            )
            continue
        adapter.patch()
        report.patched.append(adapter.name)
    if report.patched:
        _patch_scheduler()
    return report


def _patch_scheduler() -> None:
    """Close a generation the moment the scheduler frees its request (full output, exact timing)."""
    import functools

    from vllm.v1.core.sched.scheduler import Scheduler

    from probewatch.server.client.vllm_plugin.capture import request_finished

    if Scheduler.__dict__.get("_probewatch_patched"):
        return
    free = Scheduler._free_request

    @functools.wraps(free)
    def free_request(self, request, *args, **kwargs):
        try:
            request_finished(request)
        except Exception:
            log.exception("probewatch: failed to close the generation of request %s", request.request_id)
        return free(self, request, *args, **kwargs)

    Scheduler._free_request = free_request
    Scheduler._probewatch_patched = True


__all__ = ["ADAPTERS", "InstallReport", "RunnerAdapter", "install"]
