"""Per-request monitoring policy from `SamplingParams.extra_args` (`vllm_xargs` over HTTP).

Keys (all optional; the default policy is `PROBEWATCH_MONITOR`, 'all' unless set to 'none'):
- `probewatch`: true / "on" / 1 opts a request in; false / "off" / 0 opts it out **only where the
  operator allows it** (`PROBEWATCH_CALLER_OPT_OUT=1`): extra_args reach vLLM from any HTTP caller
  (`vllm_xargs`), and a monitor a caller can switch off is no monitor;
- `probewatch_probes`: probe ids (list or comma string): capture only the layers they read (the
  sidecar scores every probe of a layer it receives);
- `probewatch_metadata`: dict (or a JSON object string over HTTP), stored with the generation's
  incidents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

_OFF = {"0", "false", "off", "no", "none"}
_ON = {"1", "true", "on", "yes", "all"}


class PolicyError(ValueError):
    """An extra_args value probewatch cannot read (the request then runs under the default policy,
    logged and counted: an unreadable value must not switch monitoring off)."""


@dataclass
class RequestPolicy:
    monitored: bool
    probes: list[str] | None = None  # None: every probe
    metadata: dict[str, str] = field(default_factory=dict)
    opt_out_ignored: bool = False  # the caller asked to opt out and the operator does not allow it


def request_policy(extra_args: dict[str, Any] | None, default: bool, allow_opt_out: bool = True) -> RequestPolicy:
    """The request's policy; `allow_opt_out=False` keeps a monitored-by-default request monitored
    whatever the caller says (`opt_out_ignored` tells the caller asked)."""
    extra = extra_args or {}
    value = extra.get("probewatch")
    if value is None:
        monitored = default
    elif isinstance(value, bool | int):
        monitored = bool(value)
    elif isinstance(value, str) and value.strip().lower() in _OFF | _ON:
        monitored = value.strip().lower() in _ON
    else:
        raise PolicyError(f"extra_args['probewatch'] must be true/false or 'on'/'off', got {value!r}")
    ignored = default and not monitored and not allow_opt_out
    monitored = monitored or ignored
    probes = extra.get("probewatch_probes")
    if isinstance(probes, str):
        probes = [p.strip() for p in probes.split(",") if p.strip()]
    elif probes is not None and not (isinstance(probes, list) and all(isinstance(p, str) for p in probes)):
        raise PolicyError(f"extra_args['probewatch_probes'] must be a list of probe ids, got {probes!r}")
    metadata = extra.get("probewatch_metadata") or {}
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except ValueError:
            raise PolicyError("extra_args['probewatch_metadata'] is not a JSON object") from None
    if not isinstance(metadata, dict):
        raise PolicyError(f"extra_args['probewatch_metadata'] must be an object, got {type(metadata).__name__}")
    return RequestPolicy(monitored, probes, {str(k): str(v) for k, v in metadata.items()}, ignored)
